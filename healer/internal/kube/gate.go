package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/clock"

	"github.com/dnspulse/dnspulse/healer/api"
)

// gateResync retries pods whose condition could not be set, and looks for abandoned drains.
const gateResync = 2 * time.Second

// drainAbandonedAfter: a gate False that no drain of this healer holds (a previous leader
// was killed between drain and eviction, a restore failed) is reopened after this long.
const drainAbandonedAfter = 5 * time.Second

// gatePatcher sets the readiness-gate condition dnspulse.io/serving on a pod.
type gatePatcher struct {
	client kubernetes.Interface
	clock  clock.Clock
}

// set patches the condition. The uid in the patch is a precondition: the apiserver refuses
// the patch if the pod was replaced meanwhile.
func (g *gatePatcher) set(ctx context.Context, pod *corev1.Pod, status corev1.ConditionStatus, reason, message string) error {
	patch := map[string]any{
		"metadata": map[string]any{"uid": pod.UID},
		"status": map[string]any{
			"conditions": []corev1.PodCondition{{
				Type:               api.ConditionServing,
				Status:             status,
				Reason:             reason,
				Message:            truncate(message, 1000),
				LastTransitionTime: metav1.NewTime(g.clock.Now()),
			}},
		},
	}
	data, err := json.Marshal(patch)
	if err != nil {
		return err
	}
	_, err = g.client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.StrategicMergePatchType, data, metav1.PatchOptions{}, "status")
	if err != nil {
		return fmt.Errorf("patching pods/status of %s/%s (condition %s=%s): %w", pod.Namespace, pod.Name, api.ConditionServing, status, err)
	}
	return nil
}

// gateOpener sets dnspulse.io/serving=True on pods that declare the readiness gate and
// have no such condition yet, and on pods whose condition is False while no drain of this
// healer holds it (drainAbandonedAfter): a gate must never stay closed because a healer
// died between a drain and an eviction. pulse opens its own pod's gate too (fail open: the
// healer absent, no pod stays out of service; docs/design.md, "Fail open").
type gateOpener struct {
	pods    *podLister
	changed <-chan struct{} // a token after every discovery rebuild
	leader  *leadership
	gate    *gatePatcher
	enabled bool // --readiness-gate
	drains  *drainSet
	clock   clock.WithTicker
	log     *slog.Logger
}

func (o *gateOpener) run(ctx context.Context) {
	t := o.clock.NewTicker(gateResync)
	defer t.Stop()
	warned := map[types.UID]bool{}
	// opened remembers the resourceVersion each pod had when its gate was opened: until the
	// informer shows a newer one, the cache cannot show the condition yet.
	opened := map[types.UID]string{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-o.changed:
		case <-t.C():
		}
		pods, err := o.pods.list()
		if err != nil {
			continue
		}
		for _, p := range pods {
			if !declaresGate(p) || p.DeletionTimestamp != nil {
				continue
			}
			if o.abandoned(p) {
				if rv, ok := opened[p.UID]; o.enabled && o.leader.IsLeader() && (!ok || rv != p.ResourceVersion) && o.reopen(ctx, p) {
					opened[p.UID] = p.ResourceVersion
				}
				continue
			}
			if hasCondition(p, api.ConditionServing) {
				continue
			}
			if !o.enabled {
				if !warned[p.UID] {
					warned[p.UID] = true
					o.log.Warn("pod declares the readiness gate but --readiness-gate is off: it will not become Ready",
						"pod", p.Namespace+"/"+p.Name, "gate", api.ConditionServing)
				}
				continue
			}
			if !o.leader.IsLeader() {
				continue
			}
			if rv, ok := opened[p.UID]; ok && rv == p.ResourceVersion {
				continue
			}
			err := o.gate.set(ctx, p, corev1.ConditionTrue, reasonGateOpened, "dnspulse: the healer watches this replica")
			if err != nil {
				o.log.Warn("opening the readiness gate", "pod", p.Namespace+"/"+p.Name, "err", err)
				continue
			}
			opened[p.UID] = p.ResourceVersion
			o.log.Info("readiness gate opened", "pod", p.Namespace+"/"+p.Name, "condition", api.ConditionServing)
		}
	}
}

// abandoned says whether p's gate is False with no drain of this healer holding it, for
// longer than drainAbandonedAfter.
func (o *gateOpener) abandoned(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == api.ConditionServing {
			return c.Status == corev1.ConditionFalse && !o.drains.has(p.UID) &&
				o.clock.Since(c.LastTransitionTime.Time) >= drainAbandonedAfter
		}
	}
	return false
}

func (o *gateOpener) reopen(ctx context.Context, p *corev1.Pod) bool {
	err := o.gate.set(ctx, p, corev1.ConditionTrue, reasonReopened, "dnspulse: a drain no healer holds (a leader lost between drain and eviction, or a failed restore): serving again")
	if err != nil {
		o.log.Warn("reopening an abandoned drain", "pod", p.Namespace+"/"+p.Name, "err", err)
		return false
	}
	o.log.Info("readiness gate reopened: the drain was abandoned", "pod", p.Namespace+"/"+p.Name)
	return true
}

func declaresGate(p *corev1.Pod) bool {
	for _, g := range p.Spec.ReadinessGates {
		if g.ConditionType == api.ConditionServing {
			return true
		}
	}
	return false
}

func hasCondition(p *corev1.Pod, t corev1.PodConditionType) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == t {
			return true
		}
	}
	return false
}
