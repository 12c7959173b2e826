package kube

import (
	"context"
	"encoding/json"
	"fmt"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/dnspulse/dnspulse/healer/api"
	"github.com/dnspulse/dnspulse/healer/internal/replica"
)

// annotationMemory holds the guards' memory on the memory Lease.
const annotationMemory = "dnspulse.io/memory"

// memoryStore keeps the guards' memory (the evictions of the last hour, the replacement
// awaited) in the cluster, on a Lease of the healer's own beside the leader Lease, so that a
// new leader, or a restarted healer, honours the cooldowns, the budgets and the one-at-a-time
// of the one before (docs/design.md, "Guards"). A Lease, not a ConfigMap: the healer already
// holds leases there, and nothing else reads it.
type memoryStore struct {
	client    kubernetes.Interface
	namespace string
	name      string
}

// MemoryLeaseName is the memory Lease's name for a leader Lease name.
func MemoryLeaseName(leaderLease string) string { return leaderLease + "-memory" }

// Load implements replica.MemoryStore; no Lease yet is an empty memory.
func (s *memoryStore) Load(ctx context.Context) (replica.Memory, error) {
	var m replica.Memory
	l, err := s.client.CoordinationV1().Leases(s.namespace).Get(ctx, s.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return m, nil
	}
	if err != nil {
		return m, fmt.Errorf("reading the memory lease %s/%s: %w", s.namespace, s.name, err)
	}
	if v := l.Annotations[annotationMemory]; v != "" {
		if err := json.Unmarshal([]byte(v), &m); err != nil {
			return replica.Memory{}, fmt.Errorf("memory lease %s/%s: annotation %s: %w", s.namespace, s.name, annotationMemory, err)
		}
	}
	return m, nil
}

// Save implements replica.MemoryStore.
func (s *memoryStore) Save(ctx context.Context, m replica.Memory) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	leases := s.client.CoordinationV1().Leases(s.namespace)
	l, err := leases.Get(ctx, s.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = leases.Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{
			Name: s.name, Namespace: s.namespace,
			Labels:      map[string]string{"app.kubernetes.io/managed-by": api.ReportingController, "app.kubernetes.io/component": "memory"},
			Annotations: map[string]string{annotationMemory: string(b)},
		}}, metav1.CreateOptions{})
	} else if err == nil {
		l = l.DeepCopy()
		if l.Annotations == nil {
			l.Annotations = map[string]string{}
		}
		l.Annotations[annotationMemory] = string(b)
		_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("writing the memory lease %s/%s: %w", s.namespace, s.name, err)
	}
	return nil
}

// Memory is the store of the guards' memory.
func (m *Mode) Memory() replica.MemoryStore { return m.memory }
