// Package api names what the healer shares with the cluster and with whoever reads its
// record: the pod condition it owns, the pod annotation it reads, the states it judges,
// the actions and results of its remediations, and the reasons of its Kubernetes Events.
// These names are an interface (docs/design.md, "Interfaces that stay stable"): add new
// ones freely, never change the meaning of one.
package api

// ConditionServing is the readiness-gate condition the healer sets to False to drain a
// replica before evicting it (docs/design.md, "Draining").
const ConditionServing = "dnspulse.io/serving"

// AnnotationPulsePort on a CoreDNS pod overrides --pulse-port for that pod.
const AnnotationPulsePort = "dnspulse.io/pulse-port"

// ReportingController names the healer in Events, as the user agent of its API calls, and
// in the labels of the objects it owns.
const ReportingController = "dnspulse-healer"

// State is what the detector says of one replica (docs/design.md, "States").
type State string

// The states, as the audit log and the metrics spell them.
const (
	Unknown  State = "unknown"
	Healthy  State = "healthy"
	Suspect  State = "suspect"
	Degraded State = "degraded"
	Global   State = "global"
)

// States lists every state, for the one-hot state gauge.
var States = []State{Unknown, Healthy, Suspect, Degraded, Global}

// Action is what a remediation attempted.
type Action string

// The actions of the audit log's remediation lines.
const (
	ActionNone   Action = "none"
	ActionEvict  Action = "evict"
	ActionDelete Action = "delete"
	ActionExec   Action = "exec"
	// ActionDrain takes a replica out of service (readiness-gate condition False) before its
	// eviction; ActionUndrain puts it back.
	ActionDrain   Action = "drain"
	ActionUndrain Action = "undrain"
)

// Result is how a remediation ended.
type Result string

// The results of the audit log's remediation lines.
const (
	// ResultSuccess: the action was taken.
	ResultSuccess Result = "success"
	// ResultDryRun: the action would have been taken (--dry-run).
	ResultDryRun Result = "dry-run"
	// ResultBlocked: the cluster said not now (a PodDisruptionBudget's 429): retry later.
	ResultBlocked Result = "blocked"
	// ResultRefused: a guard, the ownership or the pod's state said no: do not retry soon.
	ResultRefused Result = "refused"
	// ResultError: the action failed for another reason: retry with backoff.
	ResultError Result = "error"
)

// Reason is the reason of a Kubernetes Event the healer records on a pod.
type Reason string

// The Event reasons. Each has one type and one action, in the table below.
const (
	ReasonReplicaDegraded       Reason = "ReplicaDegraded"
	ReasonGlobalDNSFailure      Reason = "GlobalDNSFailure"
	ReasonRemediationSkipped    Reason = "RemediationSkipped"
	ReasonReplicaFlapping       Reason = "ReplicaFlapping"
	ReasonCheckMisconfigured    Reason = "CheckMisconfigured"
	ReasonReadinessGateSet      Reason = "ReadinessGateSet"
	ReasonReadinessGateFailed   Reason = "ReadinessGateFailed"
	ReasonReadinessGateRestored Reason = "ReadinessGateRestored"
	ReasonPartition             Reason = "ReplicaUnreachable"
	ReasonBudgetSpent           Reason = "EvictionBudgetSpent"
	ReasonEvicted               Reason = "Evicted"
	ReasonEvictionBlocked       Reason = "EvictionBlocked"
	ReasonEvictionFailed        Reason = "EvictionFailed"
	ReasonEvictionUnavailable   Reason = "EvictionUnavailable"
	ReasonDeleted               Reason = "Deleted"
	ReasonDeleteFailed          Reason = "DeleteFailed"
	ReasonReplacementReady      Reason = "ReplacementReady"
	ReasonReplacementNotReady   Reason = "ReplacementNotReady"
)

// The Event types (as corev1.EventTypeNormal and EventTypeWarning spell them).
const (
	EventNormal  = "Normal"
	EventWarning = "Warning"
)

type eventKind struct{ typ, action string }

// events is the one table of every Event the healer records: its type, and the action
// events.k8s.io/v1 requires.
var events = map[Reason]eventKind{
	ReasonReplicaDegraded:       {EventWarning, "Detect"},
	ReasonGlobalDNSFailure:      {EventWarning, "Detect"},
	ReasonRemediationSkipped:    {EventWarning, "Detect"},
	ReasonReplicaFlapping:       {EventWarning, "Detect"},
	ReasonCheckMisconfigured:    {EventWarning, "Detect"},
	ReasonReadinessGateSet:      {EventNormal, "Drain"},
	ReasonReadinessGateFailed:   {EventWarning, "Drain"},
	ReasonReadinessGateRestored: {EventNormal, "Drain"},
	ReasonPartition:             {EventWarning, "Detect"},
	ReasonBudgetSpent:           {EventWarning, "Evict"},
	ReasonEvicted:               {EventNormal, "Evict"},
	ReasonEvictionBlocked:       {EventWarning, "Evict"},
	ReasonEvictionFailed:        {EventWarning, "Evict"},
	ReasonEvictionUnavailable:   {EventWarning, "Evict"},
	ReasonDeleted:               {EventNormal, "Delete"},
	ReasonDeleteFailed:          {EventWarning, "Delete"},
	ReasonReplacementReady:      {EventNormal, "Replace"},
	ReasonReplacementNotReady:   {EventWarning, "Replace"},
}

// Type is the Event type of the reason (Warning for a reason not in the table).
func (r Reason) Type() string {
	if k, ok := events[r]; ok {
		return k.typ
	}
	return EventWarning
}

// Action is the Event's action (Detect for a reason not in the table).
func (r Reason) Action() string {
	if k, ok := events[r]; ok {
		return k.action
	}
	return "Detect"
}

// Reasons lists every reason in the table.
func Reasons() []Reason {
	out := make([]Reason, 0, len(events))
	for r := range events {
		out = append(out, r)
	}
	return out
}
