//go:build e2e

package heal

import (
	"context"
	"fmt"
	"strings"
	"testing"

	authv1 "k8s.io/api/authorization/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

const (
	corednsUser = "system:serviceaccount:" + DNSNamespace + ":coredns"
	podNameKey  = "authentication.kubernetes.io/pod-name"
)

var corednsGroups = []string{"system:serviceaccounts", "system:serviceaccounts:" + DNSNamespace, "system:authenticated"}

// sarCheck is one SubjectAccessReview and the answer it must get.
type sarCheck struct {
	ns, group, resource, sub, verb, name string
	want                                 bool
}

func checkAccess(ctx context.Context, t *testing.T, user string, groups []string, checks []sarCheck) {
	t.Helper()
	for _, c := range checks {
		sar := &authv1.SubjectAccessReview{Spec: authv1.SubjectAccessReviewSpec{User: user, Groups: groups,
			ResourceAttributes: &authv1.ResourceAttributes{Namespace: c.ns, Group: c.group, Resource: c.resource,
				Subresource: c.sub, Verb: c.verb, Name: c.name}}}
		got, err := cl.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got.Status.Allowed != c.want {
			t.Errorf("%s may %s %s/%s %s (ns %q, name %q): allowed=%v, want %v (%s)", user, c.verb, c.resource, c.sub, c.group,
				c.ns, c.name, got.Status.Allowed, c.want, got.Status.Reason)
		}
	}
}

// asReplica is a client that acts as the coredns ServiceAccount with a token bound to pod (the
// user extra the apiserver sets from a projected token; "" for none), by impersonation.
func asReplica(t *testing.T, pod string) kubernetes.Interface {
	t.Helper()
	cfg := rest.CopyConfig(cl.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: corednsUser, Groups: corednsGroups}
	if pod != "" {
		cfg.Impersonate.Extra = map[string][]string{podNameKey: {pod}}
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// deniedByPolicy asserts err is a Forbidden from the named ValidatingAdmissionPolicy.
func deniedByPolicy(t *testing.T, what string, err error, policy string) {
	t.Helper()
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), policy) {
		t.Errorf("%s: %v; want Forbidden by the ValidatingAdmissionPolicy %s", what, err, policy)
	}
}

// CoreDNS's privileges (build/coredns/gate-rbac.yaml, lease-rbac.yaml): RBAC gives Leases only in
// the heartbeat namespace and pods/status patch in its own; the admission policies narrow both
// to the replica's own pod and Lease and to its one condition.
func TestCoreDNSPrivileges(t *testing.T) {
	ctx, pods := begin(t)
	checkAccess(ctx, t, corednsUser, corednsGroups, []sarCheck{
		{LeaseNamespace, "coordination.k8s.io", "leases", "", "get", "", true},
		{LeaseNamespace, "coordination.k8s.io", "leases", "", "create", "", true},
		{LeaseNamespace, "coordination.k8s.io", "leases", "", "update", "", true},
		{LeaseNamespace, "coordination.k8s.io", "leases", "", "delete", "", true},
		{DNSNamespace, "", "pods", "status", "patch", "", true},
		{DNSNamespace, "", "pods", "", "list", "", true}, // kubeadm's system:coredns: pulse reads its pod so

		{DNSNamespace, "coordination.k8s.io", "leases", "", "get", "kube-controller-manager", false},
		{DNSNamespace, "coordination.k8s.io", "leases", "", "update", "kube-controller-manager", false},
		{DNSNamespace, "coordination.k8s.io", "leases", "", "update", "kube-scheduler", false},
		{DNSNamespace, "coordination.k8s.io", "leases", "", "create", "", false},
		{DNSNamespace, "coordination.k8s.io", "leases", "", "delete", "kube-controller-manager", false},
		{HealerNamespace, "coordination.k8s.io", "leases", "", "update", "dnspulse-healer", false},
		{"kube-node-lease", "coordination.k8s.io", "leases", "", "update", "dnsp-node", false},
		{LeaseNamespace, "coordination.k8s.io", "leases", "", "list", "", false},
		{DNSNamespace, "", "pods", "", "patch", "", false},
		{DNSNamespace, "", "pods", "", "update", "", false},
		{DNSNamespace, "", "pods", "", "delete", "", false},
		{DNSNamespace, "", "pods", "eviction", "create", "", false},
		{HealerNamespace, "", "pods", "status", "patch", "", false},
		{"default", "", "pods", "status", "patch", "", false},
		{DNSNamespace, "", "secrets", "", "get", "", false},
	})

	// What RBAC allows, the policies narrow: act as replica a, with a token bound to its pod.
	a, b := pods[0].Name, pods[1].Name
	asA := asReplica(t, a)
	const gatePolicy, leasePolicy = "dnspulse-coredns-own-readiness-gate", "dnspulse-coredns-own-lease"
	patchStatus := func(cs kubernetes.Interface, pod, patch string) error {
		_, err := cs.CoreV1().Pods(DNSNamespace).Patch(ctx, pod, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}, "status")
		return err
	}
	gate := func(reason string) string {
		return fmt.Sprintf(`{"status":{"conditions":[{"type":%q,"status":"True","reason":%q}]}}`, ConditionServing, reason)
	}
	if err := patchStatus(asA, a, gate("E2EPrivilegeCheck")); err != nil {
		t.Errorf("replica %s setting its own gate: %v", a, err)
	}
	deniedByPolicy(t, "replica "+a+" setting the gate of "+b, patchStatus(asA, b, gate("E2EPrivilegeCheck")), gatePolicy)
	deniedByPolicy(t, "a token bound to no pod", patchStatus(asReplica(t, ""), a, gate("E2EPrivilegeCheck")), gatePolicy)
	deniedByPolicy(t, "replica "+a+" setting its Ready condition", patchStatus(asA, a, `{"status":{"conditions":[{"type":"Ready","status":"False","reason":"E2E"}]}}`), gatePolicy)
	deniedByPolicy(t, "replica "+a+" adding another condition", patchStatus(asA, a, `{"status":{"conditions":[{"type":"example.com/other","status":"True"}]}}`), gatePolicy)
	deniedByPolicy(t, "replica "+a+" changing its pod IP", patchStatus(asA, a, `{"status":{"podIP":"192.0.2.1"}}`), gatePolicy)
	deniedByPolicy(t, "replica "+a+" changing its phase", patchStatus(asA, a, `{"status":{"phase":"Failed"}}`), gatePolicy)
	deniedByPolicy(t, "replica "+a+" changing its labels through pods/status", patchStatus(asA, a, `{"metadata":{"labels":{"k8s-app":"not-dns"}}}`), gatePolicy)

	// Its own Lease, and no other.
	leases := asA.CoordinationV1().Leases(LeaseNamespace)
	own, err := leases.Get(ctx, a, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("replica %s reading its Lease: %v", a, err)
	}
	if _, err := leases.Update(ctx, own, metav1.UpdateOptions{}); err != nil && !apierrors.IsConflict(err) {
		t.Errorf("replica %s updating its own Lease: %v", a, err)
	}
	other := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "kube-controller-manager"}}
	_, err = leases.Create(ctx, other, metav1.CreateOptions{})
	deniedByPolicy(t, "replica "+a+" creating a Lease named kube-controller-manager", err, leasePolicy)
	_, err = asA.CoordinationV1().Leases(DNSNamespace).Create(ctx, other, metav1.CreateOptions{})
	if !apierrors.IsForbidden(err) {
		t.Errorf("replica %s creating a Lease in %s: %v, want Forbidden", a, DNSNamespace, err)
	}
	deniedByPolicy(t, "replica "+a+" deleting the Lease of "+b, leases.Delete(ctx, b, metav1.DeleteOptions{}), leasePolicy)
}
