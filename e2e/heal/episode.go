package heal

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/dnspulse/dnspulse/e2e/cluster"
)

// Fault is one way a single CoreDNS replica fails. Inject breaks pod and returns what undoes it
// (called even when the pod is gone; errors of an undo on a gone pod are ignored).
type Fault struct {
	Name   string
	Inject func(ctx context.Context, c *cluster.Cluster, pod string) (undo func(), err error)
}

func iptables() (string, error) {
	for _, p := range []string{"iptables", "iptables-nft", "iptables-legacy"} {
		if path, err := exec.LookPath(p); err == nil {
			return path, nil
		}
	}
	return "", errors.New("iptables not found (apt-get install iptables)")
}

// Faults are the single-replica faults of the fault matrix, injected as they happen in clusters.
func Faults() []Fault {
	return []Fault{
		{Name: "hung", Inject: func(ctx context.Context, c *cluster.Cluster, pod string) (func(), error) {
			// The process is stopped (SIGSTOP): it neither answers nor serves /pulse.
			err := c.Freeze(DNSNamespace, pod)
			return func() { _ = c.Thaw(DNSNamespace, pod) }, err
		}},
		{Name: "upstream", Inject: func(ctx context.Context, c *cluster.Cluster, pod string) (func(), error) {
			// This replica's route to its upstream is cut inside its network namespace: forwarded
			// names fail (SERVFAIL after forward's timeout) while cluster.local answers still work.
			ipt, err := iptables()
			if err != nil {
				return func() {}, err
			}
			rule := func(op, proto string) []string {
				return []string{ipt, "-w", op, "OUTPUT", "-p", proto, "-d", c.Gateway.String(), "--dport", "53", "-j", "DROP"}
			}
			undo := func() {
				for _, proto := range []string{"udp", "tcp"} {
					_, _ = c.InPod(context.Background(), DNSNamespace, pod, rule("-D", proto)...)
				}
			}
			for _, proto := range []string{"udp", "tcp"} {
				if _, err := c.InPod(ctx, DNSNamespace, pod, rule("-I", proto)...); err != nil {
					return undo, err
				}
			}
			return undo, nil
		}},
		{Name: "slow", Inject: func(ctx context.Context, c *cluster.Cluster, pod string) (func(), error) {
			// Every packet into the replica waits 120 ms (± 20): answers arrive, but late.
			err := c.Delay(ctx, DNSNamespace, pod, 120*time.Millisecond, 20*time.Millisecond)
			return func() { _ = c.Delay(context.Background(), DNSNamespace, pod, 0, 0) }, err
		}},
		{Name: "udp-drop", Inject: func(ctx context.Context, c *cluster.Cluster, pod string) (func(), error) {
			// UDP port 53 dropped, TCP still works (a conntrack or NetworkPolicy accident).
			err := c.DropDNSUDP(ctx, DNSNamespace, pod, true)
			return func() { _ = c.DropDNSUDP(context.Background(), DNSNamespace, pod, false) }, err
		}},
		{Name: "stale", Inject: func(ctx context.Context, c *cluster.Cluster, pod string) (func(), error) {
			// The replica's watch of the apiserver is cut: it keeps answering from its cache, and
			// the freshness canary leaves it behind.
			err := c.CutAPIServer(ctx, DNSNamespace, pod, true)
			return func() { _ = c.CutAPIServer(context.Background(), DNSNamespace, pod, false) }, err
		}},
	}
}

// FaultNamed returns the fault called name.
func FaultNamed(name string) (Fault, error) {
	var names []string
	for _, f := range Faults() {
		if f.Name == name {
			return f, nil
		}
		names = append(names, f.Name)
	}
	return Fault{}, fmt.Errorf("unknown fault %q (known: %s)", name, strings.Join(names, ", "))
}

// Episode is the timeline of one injected fault and its healing.
type Episode struct {
	Fault       string
	Pod         string
	Peers       []PodRecord // the healthy replicas at injection
	Injected    time.Time
	Verdict     AuditLine // the state line to=degraded
	VerdictSeen time.Time // the verdict's time (healer clock = ours: same host)
	DegradedEv  time.Time // Event ReplicaDegraded on the pod
	GateFalse   time.Time // dnspulse.io/serving=False observed
	Drained     time.Time // out of the kube-dns EndpointSlice's ready endpoints
	Evicted     time.Time // deletionTimestamp observed
	EvictedEv   time.Time // Event Evicted on the pod
	Remediation AuditLine // the eviction's remediation line with result success (the drain has its own)
	Replacement string
	ReplReady   time.Time // the replacement Ready and in the EndpointSlice
	ReplAnswers time.Time // the replacement answered a query on its pod IP
	// Aftercare is what went wrong after the replacement served (the healer evicting it, or still
	// judging it degraded); empty when nothing did. Heal returns it as an error too.
	Aftercare string
}

// Steps are the timeline rows, in order, with their offsets from the injection.
func (e *Episode) Steps() []Step {
	rows := []Step{
		{"fault injected (" + e.Fault + ") on " + e.Pod, e.Injected},
		{"verdict degraded: " + strings.Join(e.Verdict.Reasons, "; "), e.VerdictSeen},
		{"Event ReplicaDegraded on the pod", e.DegradedEv},
		{"readiness gate dnspulse.io/serving=False", e.GateFalse},
		{"drained: out of kube-dns EndpointSlice ready endpoints", e.Drained},
		{"evicted (deletionTimestamp set)", e.Evicted},
		{"Event Evicted on the pod", e.EvictedEv},
		{"replacement " + e.Replacement + " Ready and in the EndpointSlice", e.ReplReady},
		{"replacement answers on its pod IP", e.ReplAnswers},
	}
	return rows
}

// Step is one row of a timeline.
type Step struct {
	What string
	At   time.Time
}

// Since is the step's offset from t0, or -1 when it did not happen.
func (s Step) Since(t0 time.Time) time.Duration {
	if s.At.IsZero() {
		return -1
	}
	return s.At.Sub(t0)
}

// Timeline formats the steps, one a line, as offsets from the injection.
func (e *Episode) Timeline() string {
	var b strings.Builder
	for _, s := range e.Steps() {
		if s.At.IsZero() {
			fmt.Fprintf(&b, "  %9s  %s\n", "-", s.What)
			continue
		}
		fmt.Fprintf(&b, "  %+9.3fs  %s\n", s.At.Sub(e.Injected).Seconds(), s.What)
	}
	return b.String()
}

// Query asks server (an IP) for name/A over proto, expecting NOERROR with an answer.
func Query(proto, server, name string, timeout time.Duration) error {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	cl := &dns.Client{Net: proto, Timeout: timeout}
	r, _, err := cl.Exchange(m, net.JoinHostPort(server, "53"))
	if err != nil {
		return err
	}
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 {
		return fmt.Errorf("%s from %s: rcode %s, %d answers", name, server, dns.RcodeToString[r.Rcode], len(r.Answer))
	}
	return nil
}

// WaitSteady waits until want CoreDNS replicas are Ready, in the EndpointSlice, answer, none is
// still terminating, no healer's last word on any of them is degraded or global (suspect is a
// healthy replica on a loaded machine: a latency blip), and the cluster is steady
// (cluster.Steady: the apiserver up, no fault in place, no pod Terminating, the CoreDNS and healer
// Deployments complete). Every test and every benchmark round starts from it.
func WaitSteady(ctx context.Context, c *cluster.Cluster, o *Observer, want int, timeout time.Duration) ([]PodRecord, error) {
	var pods []PodRecord
	var why string
	err := o.Wait(ctx, timeout, fmt.Sprintf("%d healthy CoreDNS replicas", want), func() bool {
		pods = o.ReadyPods()
		if len(pods) != want {
			why = fmt.Sprintf("%d ready", len(pods))
			return false
		}
		// An evicted pod terminates for its lameduck period; until it is gone the healer still
		// counts it (toward --max-degraded), so the next episode starts after it.
		for _, p := range o.All() {
			if !p.Terminated.IsZero() && p.Gone.IsZero() {
				why = p.Name + " still terminating"
				return false
			}
		}
		for _, p := range pods {
			// The healer acts on a replica only once it has been Ready for --warm-up; a fault on a
			// younger one waits that out, and a hung one turns NotReady first (left to the liveness
			// probe). An episode measures the steady state: every replica past its warm-up.
			// The healer counts from when it first saw the replica Ready: after the healer's own
			// start (the suite's first episode) that is later than the pod's readiness.
			ready := p.Ready
			if seen := DiscoveredReady(c, p.Name); seen.After(ready) {
				ready = seen
			}
			if age := time.Since(ready); p.Ready.IsZero() || age < WarmUp {
				why = fmt.Sprintf("%s Ready for %s as a healer sees it, within the healer's warm-up", p.Name, age.Round(time.Second))
				return false
			}
			for healer, st := range LastStates(c, p.Name) {
				if st.To == "degraded" || st.To == "global" {
					why = fmt.Sprintf("healer %s says %s is %s", healer, p.Name, st.To)
					return false
				}
			}
			if err := Query("udp", p.IP, "kubernetes.default.svc.cluster.local", time.Second); err != nil {
				why = err.Error()
				return false
			}
		}
		// The cluster around them: the apiserver up, no harness fault in place, no pod of any
		// namespace Terminating, the node Ready, both Deployments complete.
		if err := c.Steady(ctx, DNSNamespace+"/coredns", HealerNamespace+"/"+Release); err != nil {
			why = err.Error()
			return false
		}
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("%w (%s)", err, why)
	}
	return pods, nil
}

// Limits bound each step of an episode.
type Limits struct {
	Verdict, Evicted, Replacement time.Duration
}

// DefaultLimits leave room for a loaded machine: the healer decides in well under a second on an
// idle one; the stale fault needs a canary rotation plus --canary-max-lag.
var DefaultLimits = Limits{Verdict: 60 * time.Second, Evicted: 60 * time.Second, Replacement: 120 * time.Second}

// Heal injects fault into target (a Ready replica; peers are the others) and waits for every step
// of its healing. It returns the episode so far with an error naming the first step that did not
// come. The fault is undone before returning.
func Heal(ctx context.Context, c *cluster.Cluster, o *Observer, fault Fault, target PodRecord, peers []PodRecord, lim Limits, progress func(Step)) (*Episode, error) {
	if progress == nil {
		progress = func(Step) {}
	}
	e := &Episode{Fault: fault.Name, Pod: target.Name, Peers: peers}
	e.Injected = time.Now()
	undo, err := fault.Inject(ctx, c, target.Name)
	defer undo()
	if err != nil {
		return e, fmt.Errorf("injecting %s into %s: %w", fault.Name, target.Name, err)
	}
	progress(e.Steps()[0])

	err = o.Wait(ctx, lim.Verdict, "the degraded verdict on "+target.Name, func() bool {
		l, ok := FindAudit(c, e.Injected, func(l AuditLine) bool {
			return l.Event == "state" && l.Replica == target.Name && l.To == "degraded"
		})
		if ok {
			e.Verdict, e.VerdictSeen = l, l.Time
		}
		return ok
	})
	if err != nil {
		return e, err
	}
	progress(e.Steps()[1])

	// Steps 2-6 are reported as they are seen (in the order they are seen).
	reported := map[int]bool{}
	observe := func() {
		r, _ := o.Pod(target.Name)
		e.GateFalse, e.Drained, e.Evicted = r.GateFalse, r.Drained, r.Terminated
		if e.Evicted.IsZero() {
			e.Evicted = r.Gone
		}
		for _, ev := range r.Events {
			if ev.Seen.Before(e.Injected) {
				continue
			}
			if ev.Reason == "ReplicaDegraded" && e.DegradedEv.IsZero() {
				e.DegradedEv = ev.Seen
			}
			if ev.Reason == "Evicted" && e.EvictedEv.IsZero() {
				e.EvictedEv = ev.Seen
			}
		}
		steps := e.Steps()
		for _, i := range []int{2, 3, 4, 5, 6} {
			if !reported[i] && !steps[i].At.IsZero() {
				reported[i] = true
				progress(steps[i])
			}
		}
	}
	err = o.Wait(ctx, lim.Evicted, "eviction of "+target.Name, func() bool {
		observe()
		return !e.Evicted.IsZero()
	})
	if err != nil {
		return e, err
	}
	// Events travel through the healer's broadcaster and the EndpointSlice controller batches its
	// updates: both may trail the eviction a little.
	_ = o.Wait(ctx, 15*time.Second, "Events on "+target.Name+" and its drain", func() bool {
		observe()
		return !e.DegradedEv.IsZero() && !e.EvictedEv.IsZero() && !e.Drained.IsZero()
	})
	for _, i := range []int{2, 3, 4, 5, 6} {
		if !reported[i] {
			progress(e.Steps()[i]) // not seen: the caller prints it as missing
		}
	}
	if l, ok := FindAudit(c, e.Injected, func(l AuditLine) bool {
		return l.Event == "remediation" && l.Replica == target.Name && l.Result == "success" && (l.Action == "evict" || l.Action == "delete")
	}); ok {
		e.Remediation = l
	}

	known := map[string]bool{target.Name: true}
	for _, p := range peers {
		known[p.Name] = true
	}
	err = o.Wait(ctx, lim.Replacement, "a Ready replacement of "+target.Name, func() bool {
		for _, p := range o.ReadyPods() {
			if !known[p.Name] && p.Owner == target.Owner {
				e.Replacement, e.ReplReady = p.Name, p.InSlice
				if p.Ready.After(p.InSlice) {
					e.ReplReady = p.Ready
				}
				if Query("udp", p.IP, "kubernetes.default.svc.cluster.local", time.Second) == nil {
					e.ReplAnswers = time.Now()
					return true
				}
			}
		}
		return false
	})
	if err != nil {
		return e, err
	}
	progress(e.Steps()[7])
	progress(e.Steps()[8])

	// The replacement must be judged healthy, not left degraded by the failures the healer saw
	// while it was starting (and then evicted on that stale verdict).
	var why string
	err = o.Wait(ctx, 30*time.Second, "every healer to judge the replacement "+e.Replacement+" healthy", func() bool {
		if r, _ := o.Pod(e.Replacement); !r.Terminated.IsZero() || !r.Gone.IsZero() {
			why = "the healer evicted the healthy replacement " + e.Replacement
			return true
		}
		why = ""
		for pod, st := range LastStates(c, e.Replacement) {
			if st.To == "degraded" || st.To == "global" {
				why = fmt.Sprintf("healer %s still judges %s %s: %s", pod, e.Replacement, st.To, st.Raw)
				return false
			}
		}
		return true
	})
	if err != nil {
		e.Aftercare = fmt.Sprintf("%v: %s", err, why)
		return e, errors.New(e.Aftercare)
	}
	if why != "" {
		e.Aftercare = why
		return e, errors.New(why)
	}
	return e, nil
}

// DiscoveredReady is the latest time a healer discovered replica already Ready (its
// `replica` audit line): a healer's --warm-up counts from then, not from the pod's readiness.
func DiscoveredReady(c *cluster.Cluster, replica string) time.Time {
	var at time.Time
	lines, _ := Audit(c)
	for _, l := range lines {
		if l.Event == "replica" && l.Message == replica && l.Fields["ready"] == true && l.Time.After(at) {
			at = l.Time
		}
	}
	return at
}

// LastStates is, per healer pod, the last state line about replica.
func LastStates(c *cluster.Cluster, replica string) map[string]AuditLine {
	out := map[string]AuditLine{}
	lines, _ := Audit(c)
	for _, l := range lines {
		if l.Event == "state" && l.Replica == replica {
			out[l.Pod] = l
		}
	}
	return out
}
