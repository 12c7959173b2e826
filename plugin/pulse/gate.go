package pulse

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/coredns/caddy"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// The readiness gate fails open (docs/design.md, "Fail open"). The healer drains a replica
// by setting its pod's condition (dnspulse.io/serving) False, and a pod that declares the
// gate is Ready only while the condition is True. So that no state of the healer (absent,
// uninstalled, crash-looping, without a leader) keeps a replica out of service, pulse opens
// its own pod's gate: when the condition is absent (a new pod) and when it has been False
// longer than a drain may last (readiness_gate_max_drain). It patches only that condition of
// only its own pod; build/coredns/gate-rbac.yaml admits nothing else.

const (
	defaultGateCondition = "dnspulse.io/serving"
	defaultMaxDrain      = 30 * time.Second
	minMaxDrain          = 10 * time.Second
	// The condition's reasons when pulse sets it.
	reasonGateStarted  = "PulseStarted"
	reasonDrainExpired = "DrainExpired"
)

// gateKeeper watches its own pod's readiness-gate condition and opens it.
type gateKeeper struct {
	client    kubernetes.Interface
	namespace string
	pod       string
	condition corev1.PodConditionType
	maxDrain  time.Duration
	now       func() time.Time

	// Only the run goroutine touches the rest.
	lastObs    time.Time // when the condition was last read (or the keeper started)
	falseKey   string    // the False episode being timed: its lastTransitionTime
	falseFrom  time.Time // when that episode began, as far as this replica can tell
	failures   int       // consecutive failed reads or writes
	undeclared bool      // the pod does not declare the gate: logged once
}

// newInClusterGateKeeper builds a gateKeeper for the pod pulse runs in: its name from
// POD_NAME, else the host name (a pod's host name is its name), its namespace from its
// ServiceAccount's files.
func newInClusterGateKeeper(condition string, maxDrain time.Duration) (*gateKeeper, error) {
	pod := os.Getenv("POD_NAME")
	if pod == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("readiness_gate: the pod's name (POD_NAME unset): %w", err)
		}
		pod = h
	}
	ns, err := ownNamespace()
	if err != nil {
		return nil, fmt.Errorf("readiness_gate: %w", err)
	}
	cs, err := inClusterClient()
	if err != nil {
		return nil, fmt.Errorf("readiness_gate: %w", err)
	}
	return &gateKeeper{client: cs, namespace: ns, pod: pod, condition: corev1.PodConditionType(condition), maxDrain: maxDrain, now: time.Now}, nil
}

// pollInterval is how often the condition is read: a sixth of the bound (5s for 30s), so
// that a drain is reopened at most that much after its bound, 1s to 10s.
func (g *gateKeeper) pollInterval() time.Duration {
	return min(max(g.maxDrain/6, time.Second), 10*time.Second)
}

// run keeps the gate open until ctx ends: a read every poll interval, sooner when a drain's
// bound falls due, and a doubling backoff (from 1s, up to the poll interval) after a failure.
func (g *gateKeeper) run(ctx context.Context) {
	g.lastObs = g.now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		timer.Reset(g.stepSafely(ctx))
	}
}

// stepSafely is step, with a panic turned into a logged failure: the gate is an extra, and
// CoreDNS must never crash for it.
func (g *gateKeeper) stepSafely(ctx context.Context) (next time.Duration) {
	defer func() {
		if p := recover(); p != nil {
			next = g.failed(fmt.Errorf("panic: %v", p))
		}
	}()
	return g.step(ctx)
}

// step reads the condition once, opens the gate when it must, and says when to look again.
func (g *gateKeeper) step(ctx context.Context) time.Duration {
	pod, err := g.read(ctx)
	if err != nil {
		return g.failed(err)
	}
	now := g.now()
	prev := g.lastObs
	g.lastObs = now
	if !declares(pod, g.condition) {
		if !g.undeclared {
			g.undeclared = true
			log.Infof("readiness_gate: pod %s/%s does not declare the readiness gate %s: nothing to open", g.namespace, g.pod, g.condition)
		}
		g.recovered()
		return g.pollInterval()
	}
	c := findPodCondition(pod, g.condition)
	switch {
	case c == nil:
		return g.open(ctx, pod, reasonGateStarted, "absent", "pulse is serving; no drain is in place")
	case c.Status == corev1.ConditionTrue:
		g.falseKey = ""
		g.recovered()
		return g.pollInterval()
	}
	// False (or Unknown): a drain. It began at its lastTransitionTime, but another node's
	// clock wrote that, in whole seconds (rounded up here, so a drain is never cut short): it
	// is believed only between this replica's last two reads.
	key := c.LastTransitionTime.UTC().Format(time.RFC3339Nano)
	if key != g.falseKey {
		g.falseKey = key
		g.falseFrom = clampTime(c.LastTransitionTime.Add(time.Second), prev, now)
	}
	left := g.falseFrom.Add(g.maxDrain).Sub(now)
	if left > 0 {
		g.recovered()
		return min(left, g.pollInterval())
	}
	log.Warningf("readiness_gate: %s has been %s for %s (reason %q: %q), longer than a drain may last (%s): no healer ended it; setting it True (fail open)",
		g.condition, c.Status, now.Sub(g.falseFrom).Round(time.Second), c.Reason, c.Message, g.maxDrain)
	return g.open(ctx, pod, reasonDrainExpired, "drain-expired",
		fmt.Sprintf("pulse: no healer ended the drain within %s; serving again (fail open)", g.maxDrain))
}

// read gets the pod with a list by name: CoreDNS's ClusterRole (system:coredns) has list
// and watch on pods, not get.
func (g *gateKeeper) read(ctx context.Context) (*corev1.Pod, error) {
	ctx, cancel := context.WithTimeout(ctx, apiCallTimeout)
	defer cancel()
	list, err := g.client.CoreV1().Pods(g.namespace).List(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("metadata.name", g.pod).String(),
	})
	if err != nil {
		return nil, fmt.Errorf("reading pod %s/%s: %w", g.namespace, g.pod, err)
	}
	for i := range list.Items {
		if list.Items[i].Name == g.pod {
			return &list.Items[i], nil
		}
	}
	return nil, fmt.Errorf("pod %s/%s not found (is POD_NAME or the host name the pod's name?)", g.namespace, g.pod)
}

// open sets the condition True with a strategic merge patch of pods/status that names only
// it (conditions merge by type) and the pod's UID (a precondition).
func (g *gateKeeper) open(ctx context.Context, pod *corev1.Pod, reason, cause, message string) time.Duration {
	patch, err := json.Marshal(map[string]any{
		"metadata": map[string]any{"uid": pod.UID},
		"status": map[string]any{"conditions": []corev1.PodCondition{{
			Type: g.condition, Status: corev1.ConditionTrue, Reason: reason, Message: message,
			LastTransitionTime: metav1.NewTime(g.now()),
		}}},
	})
	if err != nil {
		return g.failed(err)
	}
	ctx, cancel := context.WithTimeout(ctx, apiCallTimeout)
	defer cancel()
	_, err = g.client.CoreV1().Pods(g.namespace).Patch(ctx, g.pod, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status")
	if err != nil {
		return g.failed(fmt.Errorf("setting %s=True on pod %s/%s: %w", g.condition, g.namespace, g.pod, err))
	}
	gateOpens.WithLabelValues(cause).Inc()
	g.falseKey = ""
	g.recovered()
	log.Infof("readiness_gate: %s=True set on pod %s/%s (%s)", g.condition, g.namespace, g.pod, cause)
	return g.pollInterval()
}

// failed logs (the 1st, then every 12th failure in a row), counts, and backs off.
func (g *gateKeeper) failed(err error) time.Duration {
	gateErrors.Inc()
	g.failures++
	if g.failures == 1 || g.failures%12 == 0 {
		log.Warningf("readiness_gate: %v (%d failures in a row; retrying)", err, g.failures)
	}
	backoff := time.Second << min(g.failures-1, 6)
	return min(backoff, g.pollInterval())
}

func (g *gateKeeper) recovered() {
	if g.failures > 0 {
		log.Infof("readiness_gate: the apiserver answers again after %d failures", g.failures)
	}
	g.failures = 0
}

// clampTime is t within [lo, hi].
func clampTime(t, lo, hi time.Time) time.Time {
	if t.Before(lo) {
		t = lo
	}
	if t.After(hi) {
		t = hi
	}
	return t
}

func declares(p *corev1.Pod, t corev1.PodConditionType) bool {
	for _, g := range p.Spec.ReadinessGates {
		if g.ConditionType == t {
			return true
		}
	}
	return false
}

func findPodCondition(p *corev1.Pod, t corev1.PodConditionType) *corev1.PodCondition {
	for i := range p.Status.Conditions {
		if p.Status.Conditions[i].Type == t {
			return &p.Status.Conditions[i]
		}
	}
	return nil
}

// parseGateCondition reads `readiness_gate [CONDITION]`.
func parseGateCondition(c *caddy.Controller) (string, error) {
	args := c.RemainingArgs()
	switch len(args) {
	case 0:
		return defaultGateCondition, nil
	case 1:
		if err := validConditionType(args[0]); err != nil {
			return "", c.Errf("readiness_gate %q: not a condition type: %v", args[0], err)
		}
		return args[0], nil
	}
	return "", c.Errf("readiness_gate takes at most one argument (the condition), got %d", len(args))
}

// validConditionType accepts a condition type as Kubernetes does for a readiness gate: a
// qualified name, an optional DNS-subdomain prefix and a '/'.
func validConditionType(s string) error {
	prefix, name := "", s
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '/' {
			prefix, name = s[:i], s[i+1:]
			break
		}
	}
	if prefix != "" || len(name) < len(s) {
		if err := validName(prefix); err != nil {
			return fmt.Errorf("prefix %q: %w", prefix, err)
		}
	}
	if len(name) == 0 || len(name) > 63 {
		return errors.New("the name after the prefix must be 1 to 63 characters")
	}
	for i, r := range name {
		alnum := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
		if !alnum && (i == 0 || i == len(name)-1 || r != '-' && r != '_' && r != '.') {
			return errors.New("the name must be letters, digits, '-', '_' and '.', starting and ending with a letter or digit")
		}
	}
	return nil
}
