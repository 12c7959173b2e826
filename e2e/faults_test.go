//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// queryWith asks server over proto ("udp" or "tcp") with a client timeout.
func queryWith(proto, server, name string, timeout time.Duration) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	c := &dns.Client{Net: proto, Timeout: timeout}
	r, _, err := c.Exchange(m, net.JoinHostPort(server, "53"))
	return r, err
}

const kubeName = "kubernetes.default.svc.cluster.local"

func answers(proto, server string, timeout time.Duration) error {
	r, err := queryWith(proto, server, kubeName, timeout)
	if err != nil {
		return err
	}
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 {
		return fmt.Errorf("rcode %s, %d answers", dns.RcodeToString[r.Rcode], len(r.Answer))
	}
	return nil
}

// mustNotAnswer asserts the fault holds: the query fails (a timeout, as a client sees it).
func mustNotAnswer(t *testing.T, proto, server string, timeout time.Duration, fault string) {
	t.Helper()
	if err := answers(proto, server, timeout); err == nil {
		t.Fatalf("%s: %s query to %s still answered", fault, proto, server)
	}
}

// The fault helpers issue 6's tests inject with, each proven to take effect and to be undone.
func TestFaultHelpers(t *testing.T) {
	steady(t)
	ctx := context.Background()
	pods := readyDNSPods(t, ctx)
	p := pods[0]
	ip := p.Status.PodIP
	recovers := func(t *testing.T, proto string) {
		t.Helper()
		eventually(t, 30*time.Second, p.Name+" answers again over "+proto, func() error { return answers(proto, ip, time.Second) })
	}

	t.Run("freeze", func(t *testing.T) {
		pid, err := cl.PodPID(dnsNS, p.Name, "coredns")
		if err != nil {
			t.Fatal(err)
		}
		stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if !strings.Contains(string(stat), "coredns") {
			t.Fatalf("PodPID %d is not CoreDNS: %q", pid, stat)
		}
		if err := cl.Freeze(dnsNS, p.Name); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cl.Thaw(dnsNS, p.Name) })
		mustNotAnswer(t, "udp", ip, 500*time.Millisecond, "SIGSTOP")
		if err := cl.Thaw(dnsNS, p.Name); err != nil {
			t.Fatal(err)
		}
		recovers(t, "udp")
	})

	t.Run("drop UDP 53", func(t *testing.T) {
		if err := cl.DropDNSUDP(ctx, dnsNS, p.Name, true); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cl.DropDNSUDP(context.Background(), dnsNS, p.Name, false) })
		mustNotAnswer(t, "udp", ip, 500*time.Millisecond, "UDP/53 dropped")
		if err := answers("tcp", ip, 2*time.Second); err != nil {
			t.Fatalf("TCP must keep working while UDP is dropped: %v", err)
		}
		if err := cl.DropDNSUDP(ctx, dnsNS, p.Name, false); err != nil {
			t.Fatal(err)
		}
		recovers(t, "udp")
	})

	t.Run("delay", func(t *testing.T) {
		// +600ms per exchange: no answer can arrive within 300ms.
		if err := cl.Delay(ctx, dnsNS, p.Name, 600*time.Millisecond, 0); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cl.Delay(context.Background(), dnsNS, p.Name, 0, 0) })
		mustNotAnswer(t, "udp", ip, 300*time.Millisecond, "delay")
		if err := answers("udp", ip, 5*time.Second); err != nil {
			t.Fatalf("a delayed pod still answers a patient client: %v", err)
		}
		if err := cl.Delay(ctx, dnsNS, p.Name, 0, 0); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "answer within 300ms after the delay is removed", func() error { return answers("udp", ip, 300*time.Millisecond) })
	})

	t.Run("loss", func(t *testing.T) {
		if err := cl.Loss(ctx, dnsNS, p.Name, 100); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cl.Loss(context.Background(), dnsNS, p.Name, 0) })
		mustNotAnswer(t, "udp", ip, 500*time.Millisecond, "100% loss")
		if err := cl.Loss(ctx, dnsNS, p.Name, 0); err != nil {
			t.Fatal(err)
		}
		recovers(t, "udp")
	})

	t.Run("cut apiserver: stale answers", func(t *testing.T) {
		ns := "e2e-stale"
		if err := cl.CreateNamespace(ctx, ns); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { deleteNamespace(t, ns) })
		if err := cl.CutAPIServer(ctx, dnsNS, p.Name, true); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cl.CutAPIServer(context.Background(), dnsNS, p.Name, false) })
		svc, err := cl.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "fresh"},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		name := "fresh." + ns + ".svc.cluster.local"
		eventually(t, 30*time.Second, pods[1].Name+" sees the new Service", func() error {
			return answersA(pods[1].Status.PodIP, name, svc.Spec.ClusterIP)
		})
		if err := answersA(ip, name, svc.Spec.ClusterIP); err == nil {
			t.Fatalf("%s answered %s although its apiserver connection is cut", p.Name, name)
		}
		if err := cl.CutAPIServer(ctx, dnsNS, p.Name, false); err != nil {
			t.Fatal(err)
		}
		eventually(t, 2*time.Minute, p.Name+" catches up after the cut is restored", func() error {
			return answersA(ip, name, svc.Spec.ClusterIP)
		})
	})

	t.Run("one pod's Corefile view and the upstream", func(t *testing.T) {
		if err := cl.Upstream.SetRecord("upstream.test", "192.0.2.7"); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "forwarded name via "+p.Name, func() error { return answersA(ip, "upstream.test", "192.0.2.7") })
		dir, err := cl.VolumeDir(dnsNS, p.Name, "config-volume")
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, "Corefile")
		orig, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		broken := strings.Replace(string(orig), "forward . /etc/resolv.conf", "forward . "+net.JoinHostPort(cl.Gateway.String(), "5399"), 1)
		if broken == string(orig) {
			t.Fatal("Corefile has no forward . /etc/resolv.conf line to break")
		}
		if err := os.WriteFile(path, []byte(broken), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.WriteFile(path, orig, 0o644) })
		// The reload plugin polls every 30s (+ jitter).
		eventually(t, 90*time.Second, p.Name+" SERVFAILs forwarded names after its Corefile changed", func() error {
			r, err := queryWith("udp", ip, "upstream.test", time.Second)
			if err != nil {
				return err
			}
			if r.Rcode != dns.RcodeServerFailure {
				return fmt.Errorf("rcode %s", dns.RcodeToString[r.Rcode])
			}
			return nil
		})
		if err := answersA(pods[1].Status.PodIP, "upstream.test", "192.0.2.7"); err != nil {
			t.Errorf("the other replicas must be untouched: %v", err)
		}
	})
}
