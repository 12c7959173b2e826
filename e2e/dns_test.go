//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/dnspulse/dnspulse/heartbeat"
)

const (
	dnsNS       = "kube-system"
	dnsSelector = "k8s-app=kube-dns"
	servingGate = corev1.PodConditionType("dnspulse.io/serving")
)

var testBlock = &net.IPNet{IP: net.IPv4(198, 18, 0, 0), Mask: net.CIDRMask(15, 32)}

// eventually polls cond every 100ms until it holds or timeout passes; the last error explains.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v (logs: %s)", what, timeout, err, cl.LogDir)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func isReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// listReadyDNSPods returns the CoreDNS pods, sorted by name, when there are exactly three and
// all are Ready and not terminating.
func listReadyDNSPods(ctx context.Context) ([]corev1.Pod, error) {
	list, err := cl.Client.CoreV1().Pods(dnsNS).List(ctx, metav1.ListOptions{LabelSelector: dnsSelector})
	if err != nil {
		return nil, err
	}
	var pods []corev1.Pod
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil && isReady(&p) {
			pods = append(pods, p)
		}
	}
	if len(pods) != 3 || len(list.Items) != 3 {
		return nil, fmt.Errorf("%d Ready of %d CoreDNS pods, want 3 of 3", len(pods), len(list.Items))
	}
	sort.Slice(pods, func(i, j int) bool { return pods[i].Name < pods[j].Name })
	return pods, nil
}

// readyDNSPods waits until the coredns Deployment has all its replicas Ready and returns them.
func readyDNSPods(t *testing.T, ctx context.Context) []corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	eventually(t, 2*time.Minute, "3 Ready CoreDNS pods", func() error {
		var err error
		pods, err = listReadyDNSPods(ctx)
		return err
	})
	return pods
}

func query(server, name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	c := &dns.Client{Timeout: 2 * time.Second}
	r, _, err := c.Exchange(m, net.JoinHostPort(server, "53"))
	return r, err
}

// answersA asks server for name's A records and compares the set with want.
func answersA(server, name string, want ...string) error {
	r, err := query(server, name, dns.TypeA)
	if err != nil {
		return err
	}
	if r.Rcode != dns.RcodeSuccess {
		return fmt.Errorf("%s from %s: rcode %s", name, server, dns.RcodeToString[r.Rcode])
	}
	var got []string
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			got = append(got, a.A.String())
		}
	}
	sort.Strings(got)
	sort.Strings(want)
	if strings.Join(got, ",") != strings.Join(want, ",") {
		return fmt.Errorf("%s from %s: got %v, want %v", name, server, got, want)
	}
	return nil
}

func kubernetesClusterIP(t *testing.T, ctx context.Context) string {
	t.Helper()
	svc, err := cl.Client.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return svc.Spec.ClusterIP
}

func TestCoreDNSPodsServe(t *testing.T) {
	steady(t)
	ctx := context.Background()
	clusterIP := kubernetesClusterIP(t, ctx)
	for _, p := range readyDNSPods(t, ctx) {
		ip := net.ParseIP(p.Status.PodIP)
		if ip == nil || !testBlock.Contains(ip) {
			t.Errorf("pod %s: IP %q not in %s", p.Name, p.Status.PodIP, testBlock)
			continue
		}
		eventually(t, 30*time.Second, p.Name+" answers kubernetes.default", func() error {
			return answersA(p.Status.PodIP, "kubernetes.default.svc.cluster.local", clusterIP)
		})
		eventually(t, 30*time.Second, p.Name+" serves /pulse", func() error {
			resp, err := http.Get("http://" + net.JoinHostPort(p.Status.PodIP, "9155") + "/pulse")
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("status %s", resp.Status)
			}
			hb, err := heartbeat.Decode(resp.Body)
			if err != nil {
				return err
			}
			if hb.Replica != p.Name {
				return fmt.Errorf("replica %q, want the pod name %q", hb.Replica, p.Name)
			}
			return nil
		})
	}
}

func TestHeadlessServiceResolvesToPods(t *testing.T) {
	steady(t)
	ctx := context.Background()
	ns := "e2e-headless"
	if err := cl.CreateNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteNamespace(t, ns) })
	// Backends: CoreDNS with its built-in default Corefile (whoami on :53), a binary we have.
	labels := map[string]string{"app": "web"}
	_, err := cl.Client.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](2),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: ptr.To[int64](1),
					Containers: []corev1.Container{{
						Name: "web", Image: "dnspulse/coredns:dev",
						ReadinessProbe: &corev1.Probe{PeriodSeconds: 1, ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(53)}}},
					}},
				},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = cl.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Selector: labels,
			Ports: []corev1.ServicePort{{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.WaitDeploymentReady(ctx, ns, "web"); err != nil {
		t.Fatal(err)
	}
	pods, err := cl.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
	if err != nil {
		t.Fatal(err)
	}
	var ips []string
	for _, p := range pods.Items {
		ips = append(ips, p.Status.PodIP)
	}
	if len(ips) != 2 {
		t.Fatalf("want 2 backend pods, got %v", ips)
	}
	for _, p := range readyDNSPods(t, ctx) {
		eventually(t, 30*time.Second, "headless service via "+p.Name, func() error {
			return answersA(p.Status.PodIP, "web."+ns+".svc.cluster.local", ips...)
		})
	}
}

// deleteNamespace deletes ns and waits until it is gone: its pods are finalized by the node agent,
// so this also proves pod deletion end to end.
func deleteNamespace(t *testing.T, ns string) {
	t.Helper()
	ctx := context.Background()
	if err := cl.Client.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("delete namespace %s: %v", ns, err)
		return
	}
	eventually(t, 2*time.Minute, "namespace "+ns+" gone", func() error {
		_, err := cl.Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		return fmt.Errorf("still there")
	})
}

func evict(ctx context.Context, p corev1.Pod) error {
	return cl.Client.PolicyV1().Evictions(p.Namespace).Evict(ctx, &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace}})
}

func TestEvictionRespectsPDBAndReplaces(t *testing.T) {
	steady(t)
	ctx := context.Background()
	pods := readyDNSPods(t, ctx)
	victim, other := pods[0], pods[1]
	if err := evict(ctx, victim); err != nil {
		t.Fatalf("evict %s: %v", victim.Name, err)
	}
	// The eviction used the PDB's one allowed disruption: a second one must be refused.
	err := evict(ctx, other)
	if !apierrors.IsTooManyRequests(err) {
		t.Fatalf("second eviction (%s) while the PDB allows none: want 429 TooManyRequests, got %v", other.Name, err)
	}

	eventually(t, 2*time.Minute, victim.Name+" terminated and deleted", func() error {
		p, err := cl.Client.CoreV1().Pods(dnsNS).Get(ctx, victim.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		return fmt.Errorf("still present (deletionTimestamp %v)", p.DeletionTimestamp)
	})
	// Graceful: CoreDNS got SIGTERM and went through its lameduck period rather than being killed.
	logPath := filepath.Join(cl.LogDir, "pods", fmt.Sprintf("%s_%s_coredns.log", dnsNS, victim.Name))
	b, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "lameduck") {
		t.Errorf("%s did not go through lameduck (SIGTERM); log %s:\n%s", victim.Name, logPath, b)
	}

	clusterIP := kubernetesClusterIP(t, ctx)
	now := readyDNSPods(t, ctx)
	var replacement *corev1.Pod
	for i := range now {
		if now[i].Name == victim.Name {
			t.Fatalf("evicted pod %s is back", victim.Name)
		}
		if now[i].Name != pods[1].Name && now[i].Name != pods[2].Name {
			replacement = &now[i]
		}
	}
	if replacement == nil {
		t.Fatalf("no replacement among %v", now)
	}
	if len(replacement.OwnerReferences) == 0 || replacement.OwnerReferences[0].Kind != "ReplicaSet" {
		t.Errorf("replacement %s not owned by a ReplicaSet: %v", replacement.Name, replacement.OwnerReferences)
	}
	eventually(t, 30*time.Second, "replacement "+replacement.Name+" answers", func() error {
		return answersA(replacement.Status.PodIP, "kubernetes.default.svc.cluster.local", clusterIP)
	})
}

func setServing(ctx context.Context, ns, name string, status corev1.ConditionStatus) error {
	p, err := cl.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	found := false
	for i := range p.Status.Conditions {
		if p.Status.Conditions[i].Type == servingGate {
			p.Status.Conditions[i].Status, p.Status.Conditions[i].LastTransitionTime, p.Status.Conditions[i].Reason = status, metav1.Now(), "E2ETest"
			found = true
		}
	}
	if !found {
		p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: servingGate, Status: status, Reason: "E2ETest", LastTransitionTime: metav1.Now()})
	}
	_, err = cl.Client.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
	return err
}

// readyInSlice says whether ip is a ready endpoint of the kube-dns EndpointSlices.
func readyInSlice(ctx context.Context, ip string) (bool, error) {
	slices, err := cl.Client.DiscoveryV1().EndpointSlices(dnsNS).List(ctx, metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=kube-dns"})
	if err != nil {
		return false, err
	}
	for _, s := range slices.Items {
		for _, ep := range s.Endpoints {
			for _, a := range ep.Addresses {
				if a == ip {
					return ep.Conditions.Ready == nil || *ep.Conditions.Ready, nil
				}
			}
		}
	}
	return false, nil
}

func TestReadinessGateDrainsPod(t *testing.T) {
	steady(t)
	ctx := context.Background()
	p := readyDNSPods(t, ctx)[2]
	eventually(t, 30*time.Second, p.Name+" ready in the kube-dns EndpointSlice", func() error {
		ok, err := readyInSlice(ctx, p.Status.PodIP)
		if err == nil && !ok {
			err = fmt.Errorf("not a ready endpoint")
		}
		return err
	})
	if err := setServing(ctx, dnsNS, p.Name, corev1.ConditionFalse); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := setServing(context.Background(), dnsNS, p.Name, corev1.ConditionTrue); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("restore %s: %v", servingGate, err)
		}
		readyDNSPods(t, context.Background())
	})
	eventually(t, 30*time.Second, p.Name+" NotReady", func() error {
		cur, err := cl.Client.CoreV1().Pods(dnsNS).Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if isReady(cur) {
			return fmt.Errorf("still Ready")
		}
		return nil
	})
	eventually(t, 30*time.Second, p.Name+" out of the kube-dns EndpointSlice's ready endpoints", func() error {
		ok, err := readyInSlice(ctx, p.Status.PodIP)
		if err == nil && ok {
			err = fmt.Errorf("still a ready endpoint")
		}
		return err
	})
}

// setCorefile replaces the coredns ConfigMap's Corefile.
func setCorefile(ctx context.Context, corefile string) error {
	cm, err := cl.Client.CoreV1().ConfigMaps(dnsNS).Get(ctx, "coredns", metav1.GetOptions{})
	if err != nil {
		return err
	}
	cm.Data["Corefile"] = corefile
	_, err = cl.Client.CoreV1().ConfigMaps(dnsNS).Update(ctx, cm, metav1.UpdateOptions{})
	return err
}

// A ConfigMap change reaches every pod's volume, as with a kubelet, and CoreDNS's reload applies it.
func TestConfigMapUpdateReachesPods(t *testing.T) {
	steady(t)
	ctx := context.Background()
	cm, err := cl.Client.CoreV1().ConfigMaps(dnsNS).Get(ctx, "coredns", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	orig := cm.Data["Corefile"]
	const marker = "    kubernetes cluster.local"
	if !strings.Contains(orig, marker) {
		t.Fatalf("Corefile has no %q line", marker)
	}
	changed := strings.Replace(orig, marker, "    hosts {\n       192.0.2.55 cm-sync.test\n       fallthrough\n    }\n"+marker, 1)
	if err := setCorefile(ctx, changed); err != nil {
		t.Fatal(err)
	}
	pods := readyDNSPods(t, ctx)
	t.Cleanup(func() {
		if err := setCorefile(context.Background(), orig); err != nil {
			t.Errorf("restore Corefile: %v", err)
			return
		}
		for _, p := range pods {
			eventually(t, 2*time.Minute, p.Name+" back on the original Corefile", func() error {
				if answersA(p.Status.PodIP, "cm-sync.test", "192.0.2.55") == nil {
					return fmt.Errorf("still answers from the changed Corefile")
				}
				return nil
			})
		}
	})
	for _, p := range pods {
		// kubelet-like volume sync (5s) + the reload plugin's poll (30s + jitter).
		eventually(t, 2*time.Minute, p.Name+" serves the changed Corefile", func() error {
			return answersA(p.Status.PodIP, "cm-sync.test", "192.0.2.55")
		})
	}
}
