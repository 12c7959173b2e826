// Command demo is `make demo`: a local cluster with CoreDNS+pulse, the healer installed with its
// Helm chart, a steady stream of client queries, one replica broken (SIGSTOP), and the healing
// printed as it happens. Then it leaves the cluster up with the commands to look around, until
// Ctrl-C (or DEMO_WAIT, a duration; 0 ends right after the story), and removes everything.
package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dnspulse/dnspulse/e2e/cluster"
	"github.com/dnspulse/dnspulse/e2e/heal"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(1)
	}
}

var start = time.Now()

func say(format string, args ...any) {
	fmt.Printf("[%7.2fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
}

func run() error {
	wait := time.Duration(-1) // until Ctrl-C
	if v, ok := os.LookupEnv("DEMO_WAIT"); ok && v != "" {
		d, err := time.ParseDuration(v)
		if v == "0" {
			d, err = 0, nil
		}
		if err != nil {
			return fmt.Errorf("DEMO_WAIT=%q: want a duration such as 0, 30s or 10m: %w", v, err)
		}
		wait = d
	}
	if os.Geteuid() != 0 {
		return errors.New("the local cluster needs root (network namespaces, veths, iptables): run as root")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root, err := heal.RepoRoot()
	if err != nil {
		return err
	}

	say("starting the local cluster: etcd, kube-apiserver, controller-manager, scheduler, a node agent, CoreDNS x3 with pulse")
	c, err := cluster.Start(ctx, cluster.Options{Logf: func(f string, a ...any) {
		if !strings.HasPrefix(f, "pod ") { // pod lifecycle lines are for the logs, not the story
			say("  cluster: "+f, a...)
		}
	}})
	if err != nil {
		return err
	}
	defer func() {
		say("cleaning up: pods, network namespaces, veths, bridge, control plane")
		if err := c.Stop(context.Background()); err != nil {
			fmt.Fprintf(os.Stderr, "demo: stop: %v\n", err)
		}
		if left := c.Leftovers(); len(left) > 0 {
			fmt.Fprintf(os.Stderr, "demo: left behind: %v (make cluster-down removes them)\n", left)
		}
	}()
	if err := heal.PrepareCoreDNS(ctx, c, root); err != nil {
		return fmt.Errorf("CoreDNS with the Lease heartbeat: %w", err)
	}
	say("CoreDNS restarted with pulse's Lease heartbeat in %s and its readiness gate (pulse { lease %s; readiness_gate })", heal.LeaseNamespace, heal.LeaseNamespace)
	o, err := heal.Observe(context.Background(), c)
	if err != nil {
		return err
	}
	defer o.Close()
	say("helm install %s healer/chart --namespace %s (2 replicas, leader election, readiness gate)", heal.Release, heal.HealerNamespace)
	if err := heal.Install(ctx, c, root, ""); err != nil {
		return err
	}
	pods, err := heal.WaitSteady(ctx, c, o, 3, 3*time.Minute)
	if err != nil {
		return err
	}
	for _, p := range pods {
		say("  replica %s at %s: Ready, in the kube-dns EndpointSlice, healthy for the healer", p.Name, p.IP)
	}

	load := startClients(ctx, o)
	defer load.stop()
	say("clients: %d queries/s spread over the ready endpoints of kube-dns (as kube-proxy would), 1s timeout", clientQPS)
	select {
	case <-ctx.Done():
		return nil
	case <-time.After(3 * time.Second):
	}
	say("steady: %d queries, %d failed", load.sent.Load(), load.failed.Load())

	target, peers := pods[0], pods[1:]
	fault, _ := heal.FaultNamed("hung")
	fmt.Println()
	say("breaking %s: SIGSTOP, the process hangs as a deadlocked CoreDNS does (its liveness probe would need 60s+ to notice)", target.Name)
	before := load.failed.Load()
	var t0 time.Time
	e, err := heal.Heal(ctx, c, o, fault, target, peers, heal.DefaultLimits, func(s heal.Step) {
		if t0.IsZero() {
			t0 = s.At
		}
		if s.At.IsZero() {
			say("  (not seen) %s", s.What)
			return
		}
		say("  +%6.3fs %s", s.At.Sub(t0).Seconds(), s.What)
	})
	if err != nil && e.Aftercare == "" {
		return fmt.Errorf("the healing did not complete: %w\n%s", err, e.Timeline())
	}
	if e.Aftercare != "" {
		say("  WARNING after the healing: %s", e.Aftercare)
	}
	episodeErrors := load.failed.Load() - before
	lastSent, perIP := load.failures()
	fmt.Println()
	say("episode over: %s replaced by %s, serving %.2fs after the fault", e.Pod, e.Replacement, e.ReplAnswers.Sub(e.Injected).Seconds())
	for _, p := range peers {
		if r, ok := o.Pod(p.Name); ok && r.UID == p.UID && r.Terminated.IsZero() && (r.GateFalse.IsZero() || r.GateFalse.Before(e.Injected)) {
			say("  healthy replica %s untouched (same pod, never drained)", p.Name)
		} else {
			say("  WARNING: healthy replica %s was drained or replaced", p.Name)
		}
	}
	if episodeErrors == 0 {
		say("client errors during the episode: none")
	} else {
		var where []string
		for ip, n := range perIP {
			name := ip
			for _, p := range o.All() {
				if p.IP == ip {
					name = p.Name
				}
			}
			where = append(where, fmt.Sprintf("%d to %s", n, name))
		}
		say("client errors during the episode: %d of %d queries (%s); the last failed one was sent +%.3fs after the fault (drained at +%.3fs)",
			episodeErrors, load.sent.Load(), strings.Join(where, ", "), lastSent.Sub(e.Injected).Seconds(), e.Drained.Sub(e.Injected).Seconds())
	}
	if e.Verdict.Raw != "" {
		say("audit line: %s", e.Verdict.Raw)
	}
	if e.Remediation.Raw != "" {
		say("audit line: %s", e.Remediation.Raw)
	}
	load.stop()

	healerPods, _ := c.Client.CoreV1().Pods(heal.HealerNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=" + heal.Release})
	healerIP := "HEALER_POD_IP"
	if healerPods != nil && len(healerPods.Items) > 0 {
		healerIP = healerPods.Items[0].Status.PodIP
	}
	pulseIP := "COREDNS_POD_IP"
	if ready := o.ReadyPods(); len(ready) > 0 {
		pulseIP = ready[0].IP
	}
	fmt.Printf(`
Look around (another shell, as root):
  export KUBECONFIG=%s PATH=%s:$PATH
  kubectl get pods -A -o wide
  kubectl get events -n kube-system --sort-by=.lastTimestamp | grep -i dnspulse   # ReplicaDegraded, ReadinessGateSet, Evicted
  kubectl get leases -n %s          # one pulse Lease per CoreDNS replica (dnspulse.io/verdict annotation)
  kubectl get lease -n %s dnspulse-healer -o yaml     # the healer's leader
  grep -h '"event"' %s/pods/%s_*_healer.log   # the audit log (the healers' stdout; no kubelet, so no kubectl logs)
  curl -s http://%s:9155/pulse                        # a replica's heartbeat
  curl -s http://%s:9156/metrics | grep dnspulse_healer_
  dig @%s kubernetes.default.svc.cluster.local        # pods are reachable from the host on the bridge
Logs of every component and pod: %s
`, c.Kubeconfig, c.BinDir, heal.LeaseNamespace, heal.HealerNamespace, c.LogDir, heal.HealerNamespace, pulseIP, healerIP, pulseIP, c.LogDir)
	switch {
	case wait == 0:
		return nil
	case wait > 0:
		say("the cluster stays up for %s (DEMO_WAIT); Ctrl-C ends it sooner", wait)
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	default:
		say("the cluster stays up until Ctrl-C")
		<-ctx.Done()
	}
	return nil
}

const clientQPS = 200

// clients sends queries at clientQPS to the ready endpoints of kube-dns, one picked at random per
// query as kube-proxy does for the Service VIP (this cluster has no kube-proxy).
type clients struct {
	sent, failed atomic.Int64
	mu           sync.Mutex
	lastSent     time.Time      // when the last failed query was sent
	failedTo     map[string]int // failures per pod IP
	cancel       context.CancelFunc
	done         sync.WaitGroup
}

func startClients(ctx context.Context, o *heal.Observer) *clients {
	ctx, cancel := context.WithCancel(ctx)
	l := &clients{cancel: cancel, failedTo: map[string]int{}}
	tick := time.NewTicker(time.Second / clientQPS)
	l.done.Add(1)
	go func() {
		defer l.done.Done()
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			pods := o.ReadyPods()
			if len(pods) == 0 {
				continue
			}
			ip := pods[rand.IntN(len(pods))].IP
			l.done.Add(1)
			go func() {
				defer l.done.Done()
				l.sent.Add(1)
				sent := time.Now()
				if heal.Query("udp", ip, "kubernetes.default.svc.cluster.local", time.Second) != nil && ctx.Err() == nil {
					l.failed.Add(1)
					l.mu.Lock()
					if sent.After(l.lastSent) {
						l.lastSent = sent
					}
					l.failedTo[ip]++
					l.mu.Unlock()
				}
			}()
		}
	}()
	return l
}

// failures returns when the last failed query was sent and the failures per pod IP.
func (l *clients) failures() (time.Time, map[string]int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	per := map[string]int{}
	for ip, n := range l.failedTo {
		per[ip] = n
	}
	return l.lastSent, per
}

func (l *clients) stop() {
	l.cancel()
	l.done.Wait()
}
