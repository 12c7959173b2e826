package kube

import (
	"context"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes/fake"

	"github.com/dnspulse/dnspulse/healer/internal/replica"
)

// The guards' memory round-trips through its Lease: a later leader reads what an earlier
// one saved.
func TestMemoryLease(t *testing.T) {
	client := fake.NewClientset()
	s := &memoryStore{client: client, namespace: "dnspulse", name: MemoryLeaseName("dnspulse-healer")}
	ctx := context.Background()
	m, err := s.Load(ctx)
	if err != nil || len(m.Actions) != 0 || m.Pending != nil {
		t.Fatalf("empty memory: %+v, %v", m, err)
	}
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	want := replica.Memory{Actions: []replica.ActionRecord{{Replica: "a", Owner: "rs", Node: "n1", At: at}},
		Pending: &replica.Pending{Replica: "a", Owner: "rs", At: at, Existing: []string{"b"}}}
	for range 2 { // create, then update
		if err := s.Save(ctx, want); err != nil {
			t.Fatal(err)
		}
	}
	got, err := (&memoryStore{client: client, namespace: "dnspulse", name: "dnspulse-healer-memory"}).Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Actions) != 1 || !got.Actions[0].At.Equal(at) || got.Actions[0].Node != "n1" || got.Pending == nil || got.Pending.Existing[0] != "b" {
		t.Fatalf("read back %+v", got)
	}
}
