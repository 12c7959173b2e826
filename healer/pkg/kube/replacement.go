package kube

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// replacementWatch waits for a new pod of the evicted pod's controller to become Ready.
// It is checked on every pod informer event, so the remediator never blocks on it.
type replacementWatch struct {
	evicted  *corev1.Pod
	owner    *metav1.OwnerReference
	existing map[types.UID]bool // the owner's pods at eviction time: not replacements
	done     chan struct{}
}

// ownedPods returns the UIDs of the cached pods controlled by owner.
func (d *discovery) ownedPods(owner types.UID) map[types.UID]bool {
	pods, err := d.pods.Pods(d.m.cfg.Namespace).List(d.selector)
	out := map[types.UID]bool{}
	if err != nil {
		return out
	}
	for _, p := range pods {
		if ref := metav1.GetControllerOf(p); ref != nil && ref.UID == owner {
			out[p.UID] = true
		}
	}
	return out
}

// watchReplacement reports (Event, audit line, log) when a pod of owner that did not exist
// at eviction becomes Ready, or that none did within replacementTimeout.
func (d *discovery) watchReplacement(ctx context.Context, evicted *corev1.Pod, owner *metav1.OwnerReference, existing map[types.UID]bool) {
	w := &replacementWatch{evicted: evicted, owner: owner, existing: existing, done: make(chan struct{})}
	d.mu.Lock()
	d.watchers = append(d.watchers, w)
	d.mu.Unlock()
	d.rebuild() // the replacement may already be there
	go func() {
		select {
		case <-w.done:
		case <-ctx.Done():
			d.dropWatcher(w)
		case <-d.m.clock.After(replacementTimeout):
			if d.dropWatcher(w) {
				msg := fmt.Sprintf("no Ready replacement for evicted pod %s/%s from %s %s within %v",
					evicted.Namespace, evicted.Name, owner.Kind, owner.Name, replacementTimeout)
				d.m.log.Warn(msg)
				d.m.notifier.event(evicted, corev1.EventTypeWarning, "ReplacementNotReady", "Replace", msg)
				d.m.audit("replacement", map[string]any{"replica": evicted.Name, "result": "timeout", "message": msg})
			}
		}
	}()
}

// dropWatcher removes w and says whether it was still pending.
func (d *discovery) dropWatcher(w *replacementWatch) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, x := range d.watchers {
		if x == w {
			d.watchers = append(d.watchers[:i], d.watchers[i+1:]...)
			return true
		}
	}
	return false
}

// checkWatchers runs with d.mu held.
func (d *discovery) checkWatchers(pods []*corev1.Pod) {
	kept := d.watchers[:0]
	for _, w := range d.watchers {
		var found *corev1.Pod
		for _, p := range pods {
			ref := metav1.GetControllerOf(p)
			if ref != nil && ref.UID == w.owner.UID && !w.existing[p.UID] && podReady(p) {
				found = p
				break
			}
		}
		if found == nil {
			kept = append(kept, w)
			continue
		}
		close(w.done)
		msg := fmt.Sprintf("replacement pod %s/%s (from %s %s) is Ready after evicting %s",
			found.Namespace, found.Name, w.owner.Kind, w.owner.Name, w.evicted.Name)
		d.m.log.Info(msg)
		// Events and audit leave the lock: the recorder and the audit sink may block.
		go func(found *corev1.Pod, w *replacementWatch) {
			d.m.notifier.event(found, corev1.EventTypeNormal, "ReplacementReady", "Replace", msg)
			d.m.audit("replacement", map[string]any{"replica": w.evicted.Name, "replacement": found.Name, "result": "ready", "message": msg})
		}(found, w)
	}
	for i := len(kept); i < len(d.watchers); i++ {
		d.watchers[i] = nil
	}
	d.watchers = kept
}
