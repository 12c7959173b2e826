package kube

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"

	"github.com/dnspulse/dnspulse/healer/api"
	"github.com/dnspulse/dnspulse/healer/audit"
)

// replacementTimeout is how long the replacement of an evicted pod is watched.
const replacementTimeout = 10 * time.Minute

// replacements waits for a new pod of each evicted pod's controller to become Ready, and
// reports it (Event, audit line, log), or that none did in time. It is checked on every
// discovery rebuild (pod informer events), so the remediator never blocks on it.
type replacements struct {
	pods     *podLister
	notifier *notifier
	audit    AuditFunc
	clock    clock.Clock
	log      *slog.Logger

	mu       sync.Mutex
	watchers []*replacementWatch
}

type replacementWatch struct {
	evicted  *corev1.Pod
	owner    *metav1.OwnerReference
	existing map[types.UID]bool // the owner's pods at eviction time: not replacements
	done     chan struct{}
}

func newReplacements(pods *podLister, n *notifier, a AuditFunc, clk clock.Clock, log *slog.Logger) *replacements {
	return &replacements{pods: pods, notifier: n, audit: a, clock: clk, log: log}
}

// watch starts watching for the replacement of evicted (existing: the owner's pods at
// eviction time) until ctx ends or replacementTimeout passes.
func (r *replacements) watch(ctx context.Context, evicted *corev1.Pod, owner *metav1.OwnerReference, existing map[types.UID]bool) {
	w := &replacementWatch{evicted: evicted, owner: owner, existing: existing, done: make(chan struct{})}
	r.mu.Lock()
	r.watchers = append(r.watchers, w)
	r.mu.Unlock()
	if pods, err := r.pods.list(); err == nil {
		r.check(pods) // the replacement may already be there
	}
	go func() {
		select {
		case <-w.done:
		case <-ctx.Done():
			r.drop(w)
		case <-r.clock.After(replacementTimeout):
			if r.drop(w) {
				msg := fmt.Sprintf("no Ready replacement for evicted pod %s/%s from %s %s within %v",
					evicted.Namespace, evicted.Name, owner.Kind, owner.Name, replacementTimeout)
				r.log.Warn(msg)
				r.notifier.event(evicted, api.ReasonReplacementNotReady, msg)
				r.audit(audit.EventReplacement, map[string]any{"replica": evicted.Name, "result": "timeout", "message": msg})
			}
		}
	}()
}

// drop removes w and says whether it was still pending.
func (r *replacements) drop(w *replacementWatch) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, x := range r.watchers {
		if x == w {
			r.watchers = append(r.watchers[:i], r.watchers[i+1:]...)
			return true
		}
	}
	return false
}

// check looks for the replacements among the cached pods.
func (r *replacements) check(pods []*corev1.Pod) {
	r.mu.Lock()
	defer r.mu.Unlock()
	kept := r.watchers[:0]
	for _, w := range r.watchers {
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
		r.log.Info(msg)
		// Events and audit leave the lock: the recorder and the audit sink may block.
		go func(found *corev1.Pod, w *replacementWatch) {
			r.notifier.event(found, api.ReasonReplacementReady, msg)
			r.audit(audit.EventReplacement, map[string]any{"replica": w.evicted.Name, "replacement": found.Name, "result": "ready", "message": msg})
		}(found, w)
	}
	for i := len(kept); i < len(r.watchers); i++ {
		r.watchers[i] = nil
	}
	r.watchers = kept
}
