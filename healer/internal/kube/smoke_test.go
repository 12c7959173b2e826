//go:build kubesmoke

// A smoke test against a real kube-apiserver (no controller-manager, scheduler or kubelet
// needed), run as a user that holds exactly the RBAC the package comment lists:
//
//	KUBE_SMOKE_HOST=https://127.0.0.1:6443 KUBE_SMOKE_ADMIN_TOKEN=... KUBE_SMOKE_HEALER_TOKEN=... \
//	  go test -tags kubesmoke -run Smoke -v ./healer/internal/kube/
//
// The admin token makes the fixtures (namespace, RBAC, a pod, a PDB); the healer token,
// a user named "healer", runs the code under test.
package kube

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"

	"github.com/dnspulse/dnspulse/healer/api"
	"github.com/dnspulse/dnspulse/healer/internal/config"
)

func smokeClient(t *testing.T, token string) *kubernetes.Clientset {
	t.Helper()
	c, err := kubernetes.NewForConfig(&rest.Config{Host: os.Getenv("KUBE_SMOKE_HOST"), BearerToken: token,
		TLSClientConfig: rest.TLSClientConfig{Insecure: true}})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// healerRules is the package comment's RBAC as Roles.
func healerRules(ns, canaryNS string) map[string][]rbacv1.PolicyRule {
	dns := []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"pods/eviction"}, Verbs: []string{"create"}},
		{APIGroups: []string{""}, Resources: []string{"pods/status"}, Verbs: []string{"patch"}},
		{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
		{APIGroups: []string{"events.k8s.io"}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
	}
	canary := []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: []string{"create"}},
		{APIGroups: []string{""}, Resources: []string{"services"}, ResourceNames: []string{"dnspulse-canary"}, Verbs: []string{"get", "update"}},
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "create", "update"}},
	}
	return map[string][]rbacv1.PolicyRule{ns: dns, canaryNS: canary}
}

func TestSmokeRealAPIServer(t *testing.T) {
	if os.Getenv("KUBE_SMOKE_HOST") == "" {
		t.Skip("KUBE_SMOKE_HOST not set")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin := smokeClient(t, os.Getenv("KUBE_SMOKE_ADMIN_TOKEN"))
	healer := smokeClient(t, os.Getenv("KUBE_SMOKE_HEALER_TOKEN"))
	suffix := randomSuffix(3)
	ns, canaryNS := "smoke-dns-"+suffix, "smoke-healer-"+suffix
	for _, n := range []string{ns, canaryNS} {
		if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = admin.CoreV1().Namespaces().Delete(context.Background(), n, metav1.DeleteOptions{}) })
		// Without a controller-manager nobody creates it, and pods need it.
		if _, err := admin.CoreV1().ServiceAccounts(n).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	for n, rules := range healerRules(ns, canaryNS) {
		if _, err := admin.RbacV1().Roles(n).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "dnspulse-healer"}, Rules: rules}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := admin.RbacV1().RoleBindings(n).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "dnspulse-healer"},
			RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "dnspulse-healer"},
			Subjects: []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "User", Name: "healer"}}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	// A CoreDNS-like pod "running" on a node that does not exist: nothing will run it, the
	// API objects are what matters.
	p := pod("coredns-1", "198.18.0.10", &rsOwner)
	p.Namespace = ns
	p.UID = ""
	p.Spec = corev1.PodSpec{NodeName: "smoke-node", AutomountServiceAccountToken: ptr.To(false), Containers: []corev1.Container{{Name: "coredns", Image: "coredns"}},
		ReadinessGates: []corev1.PodReadinessGate{{ConditionType: api.ConditionServing}}}
	created, err := admin.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	created.Status = p.Status
	created.Status.PodIPs = []corev1.PodIP{{IP: p.Status.PodIP}}
	if _, err := admin.CoreV1().Pods(ns).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// No disruption controller runs: the PDB's status stays unobserved, and the apiserver
	// answers evictions 429 with Retry-After 10 ("still being processed"): exactly the answer
	// client-go's typed Evict would silently retry for ~100 s.
	if _, err := admin.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: "coredns"},
		Spec: policyv1.PodDisruptionBudgetSpec{MinAvailable: ptr.To(intstr.FromInt32(1)),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"k8s-app": "kube-dns"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	b := events.NewBroadcaster(&events.EventSinkImpl{Interface: healer.EventsV1()})
	cfg := baseConfig()
	cfg.Namespace, cfg.Canary.Namespace, cfg.LeaderElection.Namespace = ns, canaryNS, canaryNS
	cfg.Canary.Enabled, cfg.LeaderElection.Enabled, cfg.ReadinessGate, cfg.Canary.Interval = true, true, true, config.D(time.Second)
	opts := testOptions()
	if testing.Verbose() {
		opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	m, err := NewWithClient(ctx, cfg, opts, healer, b.NewRecorder(scheme.Scheme, api.ReportingController))
	if err != nil {
		t.Fatal(err)
	}
	m.broadcaster = b
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- m.Run(runCtx) }()
	ready := make(chan struct{})
	go func() { _ = m.Discovery().Run(runCtx, ready) }()
	select {
	case <-ready:
	case <-ctx.Done():
		t.Fatal("caches never synced (RBAC?)")
	}
	eventually(t, "leadership", m.IsLeader)
	eventually(t, "canary Service", func() bool {
		svc, err := admin.CoreV1().Services(canaryNS).Get(ctx, "dnspulse-canary", metav1.GetOptions{})
		return err == nil && svc.Spec.Type == corev1.ServiceTypeExternalName
	})
	eventually(t, "readiness gate opened by the leader", func() bool {
		got, err := admin.CoreV1().Pods(ns).Get(ctx, "coredns-1", metav1.GetOptions{})
		return err == nil && conditionIs(got, api.ConditionServing, corev1.ConditionTrue)
	})
	eventually(t, "discovered target", func() bool {
		ts := m.Discovery().Targets()
		return len(ts) == 1 && ts[0].DNSAddr == "198.18.0.10:53" && ts[0].Remediable
	})
	tg := m.Discovery().Targets()[0]

	out := m.Remediator().Remediate(ctx, tg, []string{"smoke"}, true)
	t.Logf("dry run: %+v", out)
	if out.Result != "dry-run" || !strings.Contains(out.Message, "PodDisruptionBudget would block") {
		t.Errorf("dry run: %+v", out)
	}

	start := time.Now()
	out = m.Remediator().Remediate(ctx, tg, []string{"smoke"}, false)
	t.Logf("blocked after %v: %+v", time.Since(start), out)
	if out.Result != "blocked" || out.RetryAfter <= 0 || time.Since(start) > 5*time.Second {
		t.Errorf("PDB: %+v after %v, want blocked at once", out, time.Since(start))
	}
	got, err := admin.CoreV1().Pods(ns).Get(ctx, "coredns-1", metav1.GetOptions{})
	if err != nil || got.DeletionTimestamp != nil || !conditionIs(got, api.ConditionServing, corev1.ConditionTrue) {
		t.Errorf("after a blocked eviction the pod must be there and serving: %v %+v", err, got.Status.Conditions)
	}

	if err := admin.PolicyV1().PodDisruptionBudgets(ns).Delete(ctx, "coredns", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	out = m.Remediator().Remediate(ctx, tg, []string{"smoke"}, false)
	t.Logf("evict: %+v", out)
	if out.Result != "success" {
		t.Errorf("eviction: %+v", out)
	}
	got, err = admin.CoreV1().Pods(ns).Get(ctx, "coredns-1", metav1.GetOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	if err == nil && got.DeletionTimestamp == nil {
		t.Errorf("pod not terminating after the eviction")
	}
	if err == nil && !conditionIs(got, api.ConditionServing, corev1.ConditionFalse) {
		t.Errorf("condition %s not False on the evicted pod: %+v", api.ConditionServing, got.Status.Conditions)
	}

	m.Notifier().Notify(tg, api.ReasonReplicaDegraded, "smoke verdict")
	eventually(t, "events written by the healer user", func() bool {
		l, err := admin.EventsV1().Events(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false
		}
		var reasons []string
		for _, e := range l.Items {
			reasons = append(reasons, e.Reason)
		}
		r := strings.Join(reasons, ",")
		return strings.Contains(r, "ReplicaDegraded") && strings.Contains(r, "EvictionBlocked") && strings.Contains(r, "Evicted")
	})

	eventually(t, "canary rotated by update", func() bool {
		svc, err := admin.CoreV1().Services(canaryNS).Get(ctx, "dnspulse-canary", metav1.GetOptions{})
		if err != nil {
			return false
		}
		n, _ := canaryCounter(svc.Spec.ExternalName)
		ok, _ := m.Freshness().Accept(svc.Spec.ExternalName+".", time.Now(), 0)
		return n >= 2 && ok
	})

	stop()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	lease, err := admin.CoordinationV1().Leases(canaryNS).Get(ctx, "dnspulse-healer", metav1.GetOptions{})
	if err != nil || (lease.Spec.HolderIdentity != nil && *lease.Spec.HolderIdentity != "") {
		t.Errorf("lease not released: %v %+v", err, lease)
	}
}
