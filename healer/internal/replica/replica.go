// Package replica holds what the healer's parts agree on: what a replica is, how it is
// found (Discovery) and how it is acted on (Remediator, Notifier). Static mode and
// Kubernetes mode each implement these; the engine (probe, heartbeat, detect, guards)
// depends only on this package.
package replica

import (
	"context"
	"time"

	"github.com/dnspulse/dnspulse/healer/api"
)

// Target is one CoreDNS replica the healer watches.
type Target struct {
	// Name is the replica's name: the pod name in Kubernetes, the NAME of --target in static mode.
	Name string
	// DNSAddr is host:port the probes go to: the pod IP, never the Service VIP.
	DNSAddr string
	// PulseAddr is host:port of the replica's pulse listener (GET /pulse); empty if none.
	PulseAddr string
	// Ready says whether the replica is meant to be serving (Pod Ready, or always in static
	// mode). A replica that is not Ready (starting, terminating) is watched but never
	// counted as a healthy peer and never remediated.
	Ready bool
	// Remediable is false when the healer must not act on it (e.g. the pod is not controlled
	// by a ReplicaSet or DaemonSet); Why says why.
	Remediable bool
	Why        string
	// Owner is the UID of the controller that recreates it ("" in static mode), Node the
	// node it runs on: the eviction budgets count per owner and per node.
	Owner, Node string
	// Drained: the healer's readiness-gate condition is False on it (traffic removed).
	Drained bool
	// Terminating: it is on its way out (deleted, evicted).
	Terminating bool
	// Serving is the cluster's own, independent view of the replica: the kubelet's
	// container readiness (ContainersReady; true in static mode), and the replica's pulse
	// Lease when there is one (LeaseFresh: renewed lately and not degraded; LeaseKnown:
	// a Lease is read at all). The healer cannot reach a replica is not proof that it is
	// broken: these can say otherwise (docs/design.md, "Reachability is not proof").
	ContainersReady bool
	LeaseKnown      bool
	LeaseFresh      bool
	// ClusterView: there is such a view at all (Kubernetes mode); without one (static
	// mode) unreachability is all the evidence there can be.
	ClusterView bool
}

// Discovery yields the current set of replicas.
type Discovery interface {
	// Run keeps the set current until ctx ends; it returns once the first set is known
	// (informer caches synced) through the ready channel being closed, or with an error.
	Run(ctx context.Context, ready chan<- struct{}) error
	// Targets returns a snapshot of the replicas, sorted by name.
	Targets() []Target
}

// Outcome is what a remediation did.
type Outcome struct {
	// Action is what was attempted.
	Action api.Action
	// Result says how it ended: blocked (try later) and error are retried with backoff,
	// refused is not retried soon.
	Result api.Result
	// Message explains the result for the audit log and the Event.
	Message string
	// RetryAfter, when non-zero, is how long to wait before trying again ("blocked").
	RetryAfter time.Duration
}

// Drainer takes a replica out of service and back, reversibly, before it is replaced: the
// Kubernetes mode's readiness gate. A mode that cannot drain does not implement it.
type Drainer interface {
	// CanEvict asks whether an eviction would be admitted now (a server-side dry run: the
	// PodDisruptionBudget included), so that nothing is drained that cannot be replaced.
	CanEvict(ctx context.Context, t Target) (ok bool, why string)
	// Anticipate says the replica may be drained in a moment (it became suspect): the mode
	// may run CanEvict's check now, in the background, for the drain to use if it comes
	// soon. It never blocks and changes nothing.
	Anticipate(t Target)
	Drain(ctx context.Context, t Target, reasons []string) Outcome
	Undrain(ctx context.Context, t Target, why string) Outcome
}

// Remediator replaces one degraded replica. Guards common to every mode (one in flight,
// cooldowns, min-available, max-degraded, dry-run) are applied by the caller before it is
// called; a Remediator applies only what its mode knows (leader only, ownership, PDB).
type Remediator interface {
	Remediate(ctx context.Context, t Target, reasons []string, dryRun bool) Outcome
}

// Notifier tells the outside world about states and actions (Kubernetes Events on the
// pod; nothing in static mode, where the audit log is the record).
type Notifier interface {
	// Notify records one event on the replica; the reason says its type and action
	// (package api's table).
	Notify(t Target, reason api.Reason, message string)
	// NotifyHealer records one event about the healer's own configuration (a broken
	// check), on the healer's pod.
	NotifyHealer(reason api.Reason, message string)
}

// FreshnessSource is the freshness canary: a name whose answer the healer itself changes.
// Every replica's answer must catch up with the current value within MaxLag.
type FreshnessSource interface {
	// Question is the fully qualified name to ask (type CNAME).
	Question() string
	// Accept says whether a CNAME target seen at time 'at', with the given TTL left, is
	// fresh enough: it is the current value, or a previous value replaced less than MaxLag
	// before 'at', plus how long a cache held the answer (a cache counts the TTL down).
	Accept(target string, at time.Time, ttl time.Duration) (ok bool, why string)
}

// Memory is what the guards must remember across leaders and restarts: the evictions of
// the last hour (cooldowns, budgets) and the one whose replacement is awaited (one at a
// time). Kubernetes mode keeps it in the cluster; static mode in the process.
type Memory struct {
	Actions []ActionRecord `json:"actions"`
	Pending *Pending       `json:"pending,omitempty"`
}

// ActionRecord is one eviction (or exec) that happened.
type ActionRecord struct {
	Replica string    `json:"replica"`
	Owner   string    `json:"owner,omitempty"`
	Node    string    `json:"node,omitempty"`
	At      time.Time `json:"at"`
}

// Pending is an eviction whose replacement is not yet Ready and judged healthy.
type Pending struct {
	Replica string    `json:"replica"`
	Owner   string    `json:"owner,omitempty"`
	At      time.Time `json:"at"`
	// Existing are the owner's replicas at the eviction: none of them is the replacement.
	Existing []string `json:"existing,omitempty"`
}

// MemoryStore loads and saves the guards' Memory.
type MemoryStore interface {
	Load(ctx context.Context) (Memory, error)
	Save(ctx context.Context, m Memory) error
}
