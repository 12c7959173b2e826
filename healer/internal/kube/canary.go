package kube

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/clock"

	"github.com/dnspulse/dnspulse/healer/api"
	"github.com/dnspulse/dnspulse/healer/audit"
	"github.com/dnspulse/dnspulse/healer/internal/config"
)

// CanaryDomain is the reserved domain (RFC 2606 .invalid) the canary's ExternalName points
// into: it never resolves, so nothing can depend on it.
const CanaryDomain = "canary.dnspulse.invalid"

// historyLen bounds the previous canary values kept to judge late answers.
const historyLen = 64

// canary is the freshness canary. The leader rotates spec.externalName of one
// ExternalName Service; a replica that keeps answering a value replaced more than MaxLag
// ago has lost its apiserver watch. Only values the apiserver confirmed count: when a write
// fails, the current value stays current and no lag clock runs, so an API outage never
// makes the replicas look stale.
type canary struct {
	client   kubernetes.Interface
	cfg      config.Canary
	leader   *leadership
	clock    clock.WithTicker
	log      *slog.Logger
	audit    AuditFunc
	question string

	mu      sync.Mutex
	svc     *corev1.Service // last confirmed object (leader); nil until read or created
	current string          // confirmed current value, normalized; "" until known
	counter uint64          // counter of the current value
	// pending are values whose write had an unknown outcome (timeout, connection lost):
	// the apiserver may have stored them, so a replica answering one is not stale.
	pending map[string]bool
	// next is the value being written; it is retried as is until confirmed, so an API
	// outage leaves at most one pending value however long it lasts.
	next    string
	nextN   uint64
	history []pastValue // replaced values, oldest first
	// skipped are counters this healer never read: a follower reads the Service every
	// interval, as often as the leader rotates it, and may read 328 then 330. Such a value
	// was replaced at the latest when the newer one was read: its lag counts from then.
	skipped []skippedValues
	// knownSince is when this healer first learned a value. Older values it never saw (a
	// previous leader's) may have been replaced just before: they get MaxLag from here.
	knownSince time.Time
	// maxTTL is the longest TTL a canary answer had: the record's own TTL.
	maxTTL time.Duration
	// apiTrouble: a write or read of the Service failed since the last confirmed value. The
	// apiserver (or the way to it) was in trouble, and the replicas' watches with it: the
	// value replaced next gets recoveryGrace on top of MaxLag (R3).
	apiTrouble bool
}

// recoveryGrace is the extra lag allowed for a value replaced right after the apiserver
// was unreachable: CoreDNS's watches reconnect with backoff, seconds apart, and being later
// than a peer to recover from a shared event is not a fault.
const recoveryGrace = 30 * time.Second

type pastValue struct {
	value      string
	replacedAt time.Time
	grace      time.Duration // extra lag allowed beyond MaxLag
}

func newCanary(client kubernetes.Interface, cfg config.Canary, clusterDomain string, leader *leadership, clk clock.WithTicker, log *slog.Logger, audit AuditFunc) *canary {
	return &canary{
		client: client, cfg: cfg, leader: leader, clock: clk, log: log, audit: audit,
		question: fmt.Sprintf("%s.%s.svc.%s.", cfg.Service, cfg.Namespace, strings.TrimSuffix(clusterDomain, ".")),
		pending:  map[string]bool{},
	}
}

// Question is the canary Service's name, asked with type CNAME.
func (c *canary) Question() string { return c.question }

// Accept says whether a CNAME target seen at 'at' is fresh enough. A cache (CoreDNS's
// cache plugin in front of kubernetes) may serve the previous value for as long as its TTL
// allowed, counting the TTL down: an answer whose TTL is below the longest seen has sat in a
// cache that long, and the lag allowed is MaxLag plus that (R3).
func (c *canary) Accept(target string, at time.Time, ttl time.Duration) (bool, string) {
	t := normalizeName(target)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.maxTTL = max(c.maxTTL, ttl)
	ttl = c.maxTTL - ttl // how long the answer has been cached
	maxLag := c.cfg.MaxLag.D()
	switch {
	case c.current == "":
		return true, "canary value not established yet"
	case t == c.current:
		return true, ""
	case c.pending[t]:
		return true, "answer is a canary value whose write is unconfirmed (newer than the confirmed one)"
	}
	// judge: a value replaced at replacedAt may be answered for MaxLag (plus its time in a
	// cache and any grace) after it.
	judge := func(replacedAt time.Time, grace time.Duration, note string) (bool, string) {
		lag := at.Sub(replacedAt)
		if lag < maxLag+ttl+grace {
			return true, ""
		}
		return false, fmt.Sprintf("canary answer %s%s was replaced %v ago by %s (max lag %v, cached for %v): stale data, the replica's watch on the API is behind",
			t, note, lag.Round(time.Millisecond), c.current, maxLag, ttl)
	}
	for i := len(c.history) - 1; i >= 0; i-- {
		if h := c.history[i]; h.value == t {
			return judge(h.replacedAt, h.grace, "")
		}
	}
	n, ok := canaryCounter(t)
	for i := len(c.skipped) - 1; ok && i >= 0; i-- {
		if sk := c.skipped[i]; n >= sk.from && n <= sk.to {
			return judge(sk.replacedAt, sk.grace, " (a value this healer never read: replaced at the latest when it read a newer one)")
		}
	}
	if ok && n > c.counter {
		// Written by the leader after this healer last read the Service: newer, so fresh.
		return true, "answer is newer than the last canary value this healer saw"
	}
	if ok && at.Sub(c.knownSince) < maxLag+ttl {
		return true, "answer predates this healer's first canary value; within max lag of learning it"
	}
	if t == "" {
		return false, fmt.Sprintf("no CNAME answer for the canary %s (current %s)", c.question, c.current)
	}
	return false, fmt.Sprintf("canary answer %s is older than any value this healer knows (current %s, max lag %v)", t, c.current, maxLag)
}

// skippedValues are the counters from..to, never read by this healer, replaced at the
// latest at replacedAt.
type skippedValues struct {
	from, to   uint64
	replacedAt time.Time
	grace      time.Duration
}

// rotate runs on the leader until ctx ends (leadership lost or shutdown).
func (c *canary) rotate(ctx context.Context) {
	c.log.Info("canary rotation started", "service", c.ref(), "interval", c.cfg.Interval.D(), "maxLag", c.cfg.MaxLag.D())
	c.mu.Lock()
	c.svc = nil // another leader may have written since: read before writing
	c.mu.Unlock()
	c.step(ctx)
	every(ctx, c.clock, c.cfg.Interval.D(), func() { c.step(ctx) })
}

// every calls fn every d (on clk) until ctx ends.
func every(ctx context.Context, clk clock.WithTicker, d time.Duration, fn func()) {
	t := clk.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
			fn()
		}
	}
}

// step makes sure the Service exists, then writes the next value.
func (c *canary) step(ctx context.Context) {
	c.mu.Lock()
	haveSvc := c.svc != nil
	c.mu.Unlock()
	if !haveSvc {
		if err := c.ensure(ctx); err != nil {
			c.fail("ensure", err)
		}
		return // a freshly read or created value gets a full interval before it is replaced
	}
	if err := c.advance(ctx); err != nil {
		c.fail("update", err)
	}
}

func (c *canary) ref() string {
	return "service " + c.cfg.Namespace + "/" + c.cfg.Service
}

// ensure reads the canary Service, or creates it, and takes its value as current.
func (c *canary) ensure(ctx context.Context) error {
	svcs := c.client.CoreV1().Services(c.cfg.Namespace)
	svc, err := svcs.Get(ctx, c.cfg.Service, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		name, n := c.nextValue()
		svc, err = svcs.Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{
				Name:      c.cfg.Service,
				Namespace: c.cfg.Namespace,
				Labels:    map[string]string{"app.kubernetes.io/managed-by": api.ReportingController, "app.kubernetes.io/component": "freshness-canary"},
				Annotations: map[string]string{
					"dnspulse.io/purpose": "freshness canary: dnspulse-healer rotates spec.externalName; do not edit",
				},
			},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: name},
		}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("creating %s: %w", c.ref(), err)
		}
		c.log.Info("canary service created", "service", c.ref(), "externalName", name)
		c.confirm(svc, n)
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading %s: %w", c.ref(), err)
	}
	if svc.Spec.Type != corev1.ServiceTypeExternalName {
		return fmt.Errorf("%s exists with type %s, not ExternalName: refusing to take it over (delete it or choose --canary-service)", c.ref(), svc.Spec.Type)
	}
	n, _ := canaryCounter(normalizeName(svc.Spec.ExternalName))
	c.confirm(svc, n)
	return nil
}

// advance writes the next value; only a successful answer moves the lag clock.
func (c *canary) advance(ctx context.Context) error {
	c.mu.Lock()
	svc := c.svc.DeepCopy()
	c.mu.Unlock()
	c.mu.Lock()
	if c.next == "" {
		c.next, c.nextN = c.nextValueLocked()
	}
	name, n := c.next, c.nextN
	c.mu.Unlock()
	svc.Spec.ExternalName = name
	updated, err := c.client.CoreV1().Services(svc.Namespace).Update(ctx, svc, metav1.UpdateOptions{})
	if err != nil {
		c.mu.Lock()
		if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
			c.svc = nil // changed or deleted by someone else: read it again next time
		}
		if apierrors.ReasonForError(err) == metav1.StatusReasonUnknown || apierrors.IsTimeout(err) || apierrors.IsServerTimeout(err) {
			// No answer from the apiserver: the write may have landed.
			c.pending[name] = true
		}
		c.mu.Unlock()
		return fmt.Errorf("updating %s to %s: %w", c.ref(), name, err)
	}
	c.confirm(updated, n)
	return nil
}

// confirm makes the apiserver's confirmed value current; the one it replaces starts its lag
// clock now, after the confirmation.
func (c *canary) confirm(svc *corev1.Service, n uint64) {
	v := normalizeName(svc.Spec.ExternalName)
	now := c.clock.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.svc = svc
	c.next, c.nextN = "", 0
	if v == c.current {
		return
	}
	var grace time.Duration
	if c.apiTrouble {
		grace, c.apiTrouble = recoveryGrace, false
	}
	if c.current != "" {
		c.history = append(c.history, pastValue{value: c.current, replacedAt: now, grace: grace})
	} else {
		c.knownSince = now
	}
	// Unconfirmed writes are older than this one: if they landed, they are replaced now.
	for p := range c.pending {
		if p != v {
			c.history = append(c.history, pastValue{value: p, replacedAt: now, grace: grace})
		}
		delete(c.pending, p)
	}
	if len(c.history) > historyLen {
		c.history = append([]pastValue(nil), c.history[len(c.history)-historyLen:]...)
	}
	if c.current != "" && n > c.counter+1 {
		c.skipped = append(c.skipped, skippedValues{from: c.counter + 1, to: n - 1, replacedAt: now, grace: grace})
		if len(c.skipped) > historyLen {
			c.skipped = append([]skippedValues(nil), c.skipped[len(c.skipped)-historyLen:]...)
		}
	}
	c.current = v
	if n > c.counter {
		c.counter = n
	}
	c.log.Debug("canary value confirmed", "service", c.ref(), "externalName", v)
}

// follow keeps a non-leader's view current by reading the Service, so that its judgments
// agree with the leader's rotation. The leader learns its values from its own writes.
func (c *canary) follow(ctx context.Context) {
	every(ctx, c.clock, c.cfg.Interval.D(), func() { c.followOnce(ctx) })
}

func (c *canary) followOnce(ctx context.Context) {
	if c.leader.IsLeader() {
		return
	}
	svc, err := c.client.CoreV1().Services(c.cfg.Namespace).Get(ctx, c.cfg.Service, metav1.GetOptions{})
	if err != nil {
		if !apierrors.IsNotFound(err) && ctx.Err() == nil {
			c.log.Warn("canary: reading the Service as a follower", "service", c.ref(), "err", err)
			c.mu.Lock()
			c.apiTrouble = true
			c.mu.Unlock()
		}
		return
	}
	if svc.Spec.Type != corev1.ServiceTypeExternalName {
		return
	}
	n, _ := canaryCounter(normalizeName(svc.Spec.ExternalName))
	c.confirm(svc, n)
	c.mu.Lock()
	c.svc = nil // a follower that becomes leader reads again before writing
	c.mu.Unlock()
}

func (c *canary) fail(op string, err error) {
	c.mu.Lock()
	c.apiTrouble = true
	c.mu.Unlock()
	c.log.Warn("canary: "+op+" failed; the current value stays current (no replica is judged stale for it)", "service", c.ref(), "err", err)
	c.audit(audit.EventCanary, map[string]any{"service": c.ref(), "op": op, "error": err.Error()})
}

// nextValue is "<counter>-<random>.canary.dnspulse.invalid": the counter orders values
// across leaders, the random part keeps two healers from ever writing the same name.
func (c *canary) nextValue() (string, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nextValueLocked()
}

func (c *canary) nextValueLocked() (string, uint64) {
	n := c.counter + 1
	return fmt.Sprintf("%d-%s.%s", n, randomSuffix(3), CanaryDomain), n
}

func canaryCounter(v string) (uint64, bool) {
	if !strings.HasSuffix(v, "."+CanaryDomain) {
		return 0, false
	}
	head, _, ok := strings.Cut(v, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(head, 10, 64)
	return n, err == nil
}

func normalizeName(s string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(s)), ".")
}
