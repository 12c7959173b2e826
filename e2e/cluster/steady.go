package cluster

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
)

// The steady state is what every end-to-end test starts from and leaves behind, so that one
// failing test cannot cascade into the ones after it: the apiserver up, no fault of the harness in
// place, the node Ready, every named Deployment with exactly its replicas Ready and current, no
// pod Terminating anywhere, and every PodDisruptionBudget counting all its pods healthy.

// runningPods are the node agent's runners of live (not terminating) pods.
func (n *Node) runningPods() []*podRunner {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]*podRunner, 0, len(n.pods))
	for _, r := range n.pods {
		if !r.isTerminating() {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ns+"/"+out[i].name < out[j].ns+"/"+out[j].name })
	return out
}

// podFaults are the faults in place on one pod: stopped processes, the Delay reader, and any
// iptables rule in its netns (pods never set their own: every rule there is a fault: DropDNSUDP,
// CutAPIServer, Loss, Delay's NFQUEUE, the heal package's upstream cut).
func (c *Cluster) podFaults(ctx context.Context, r *podRunner) []string {
	var out []string
	r.mu.Lock()
	cs := append([]*container(nil), r.containers...)
	delayed := r.delay != nil
	netns := ""
	if r.net != nil {
		netns = r.net.netns
	}
	r.mu.Unlock()
	who := r.ns + "/" + r.name
	for _, ct := range cs {
		if pid := ct.pid(); pid > 0 && !allThreads(pid, false) {
			out = append(out, fmt.Sprintf("%s: container %s (pid %d) stopped", who, ct.spec.Name, pid))
		}
	}
	if delayed {
		out = append(out, who+": delay")
	}
	if netns == "" {
		return out
	}
	ipt, err := iptablesPath()
	if err != nil {
		return out // no iptables: no rule can have been installed
	}
	rules, err := run(ctx, "ip", "netns", "exec", netns, ipt, "-w", "-S")
	if err != nil {
		if r.isTerminating() || !linkExists(r.hostVethName()) {
			return out // went away meanwhile
		}
		return append(out, fmt.Sprintf("%s: iptables rules unreadable: %v", who, err))
	}
	for _, l := range strings.Split(rules, "\n") {
		if strings.HasPrefix(l, "-A ") || strings.HasPrefix(l, "-N ") {
			out = append(out, fmt.Sprintf("%s: iptables %s", who, l))
		}
	}
	return out
}

func (r *podRunner) hostVethName() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.net == nil {
		return ""
	}
	return r.net.hostVeth
}

// ActiveFaults lists every harness fault in place now, one line each: the apiserver stopped, the
// upstream DNS not answering, a pod's process stopped (Freeze), delayed (Delay), or any iptables
// rule in a pod's netns (DropDNSUDP, CutAPIServer, Loss, or rules a test added with InPod).
// Empty in the steady state.
func (c *Cluster) ActiveFaults(ctx context.Context) []string {
	var out []string
	if p := c.apiserverProc(); p == nil || p.exited() {
		out = append(out, "kube-apiserver stopped")
	}
	if m := c.Upstream.Mode(); m != UpstreamAnswer {
		out = append(out, fmt.Sprintf("upstream DNS mode %d (not answering)", m))
	}
	for _, r := range c.Node.runningPods() {
		out = append(out, c.podFaults(ctx, r)...)
	}
	return out
}

// ClearFaults undoes every fault ActiveFaults can list: it starts the apiserver, sets the upstream
// answering, and for every live pod continues its stopped processes, ends its Delay and flushes
// the iptables rules of its netns. A test's cleanup calls it so that the next test starts clean
// even when this one failed halfway through a fault.
func (c *Cluster) ClearFaults(ctx context.Context) error {
	var errs []error
	if err := c.StartAPIServer(ctx); err != nil {
		errs = append(errs, fmt.Errorf("start kube-apiserver: %w", err))
	}
	c.Upstream.SetMode(UpstreamAnswer)
	ipt, iptErr := iptablesPath()
	for _, r := range c.Node.runningPods() {
		r.mu.Lock()
		cs := append([]*container(nil), r.containers...)
		dl := r.delay
		r.delay = nil
		r.lossRule = ""
		netns := ""
		if r.net != nil {
			netns = r.net.netns
		}
		r.mu.Unlock()
		for _, ct := range cs {
			if pid := ct.pid(); pid > 0 && !allThreads(pid, false) {
				_ = syscall.Kill(pid, syscall.SIGCONT)
			}
		}
		if dl != nil {
			dl.close()
		}
		if netns != "" && iptErr == nil {
			for _, args := range [][]string{{"-F"}, {"-X"}} {
				if _, err := run(ctx, "ip", append([]string{"netns", "exec", netns, ipt, "-w"}, args...)...); err != nil && !r.isTerminating() {
					errs = append(errs, fmt.Errorf("%s/%s: %w", r.ns, r.name, err))
				}
			}
		}
	}
	return errors.Join(errs...)
}

func (c *Cluster) apiserverProc() *process {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.proc("kube-apiserver")
}

// Steady is one check of the steady state (see WaitSteady): nil, or what is not steady yet.
func (c *Cluster) Steady(ctx context.Context, deployments ...string) error {
	if faults := c.ActiveFaults(ctx); len(faults) > 0 {
		return fmt.Errorf("faults in place: %s", strings.Join(faults, "; "))
	}
	ctx, cancel := context.WithTimeout(ctx, apiCallTimeout)
	defer cancel()
	node, err := c.Client.CoreV1().Nodes().Get(ctx, c.Node.Name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("node %s: %w", c.Node.Name, err)
	}
	ready := false
	for _, cond := range node.Status.Conditions {
		ready = ready || (cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue)
	}
	if !ready {
		return fmt.Errorf("node %s not Ready", c.Node.Name)
	}
	for _, t := range node.Spec.Taints {
		if t.Effect == corev1.TaintEffectNoSchedule || t.Effect == corev1.TaintEffectNoExecute {
			return fmt.Errorf("node %s tainted %s:%s", c.Node.Name, t.Key, t.Effect)
		}
	}
	pods, err := c.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("pods: %w", err)
	}
	for _, p := range pods.Items {
		if p.DeletionTimestamp != nil {
			return fmt.Errorf("pod %s/%s Terminating since %s", p.Namespace, p.Name, p.DeletionTimestamp.Format(time.RFC3339))
		}
	}
	// The disruption controller caught up: every PodDisruptionBudget counts all its pods healthy.
	// Right after a rollout its status may still describe the pods that were starting, and an
	// eviction is then refused though every pod is Ready (seen as a 429 on the first heal test).
	pdbs, err := c.Client.PolicyV1().PodDisruptionBudgets("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("PodDisruptionBudgets: %w", err)
	}
	for _, b := range pdbs.Items {
		if st := b.Status; st.ObservedGeneration < b.Generation || st.CurrentHealthy != st.ExpectedPods {
			return fmt.Errorf("PodDisruptionBudget %s/%s: %d of %d pods healthy (observed generation %d of %d), %d disruptions allowed",
				b.Namespace, b.Name, st.CurrentHealthy, st.ExpectedPods, st.ObservedGeneration, b.Generation, st.DisruptionsAllowed)
		}
	}
	for _, d := range deployments {
		ns, name, ok := strings.Cut(d, "/")
		if !ok {
			return fmt.Errorf("deployment %q: want namespace/name", d)
		}
		dep, err := c.Client.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("deployment %s: %w", d, err)
		}
		want := ptr.Deref(dep.Spec.Replicas, 1)
		if dep.Status.ObservedGeneration < dep.Generation || dep.Status.Replicas != want || dep.Status.UpdatedReplicas != want || dep.Status.ReadyReplicas != want {
			return fmt.Errorf("deployment %s: %d replicas, %d updated, %d ready of %d", d, dep.Status.Replicas, dep.Status.UpdatedReplicas, dep.Status.ReadyReplicas, want)
		}
		sel, err := metav1.LabelSelectorAsSelector(dep.Spec.Selector)
		if err != nil {
			return fmt.Errorf("deployment %s selector: %w", d, err)
		}
		n := 0
		for _, p := range pods.Items {
			if p.Namespace == ns && sel.Matches(labels.Set(p.Labels)) {
				if !podReady(&p) {
					return fmt.Errorf("pod %s/%s of %s not Ready", p.Namespace, p.Name, d)
				}
				n++
			}
		}
		if n != int(want) {
			return fmt.Errorf("deployment %s: %d pods, want %d", d, n, want)
		}
	}
	return nil
}

// WaitSteady waits up to timeout for the steady state: no harness fault in place (ActiveFaults
// empty; the apiserver answering /readyz), the node Ready and untainted, no pod Terminating, every
// PodDisruptionBudget's status caught up (all its pods healthy), and each of deployments
// ("namespace/name") with exactly its replicas, all Ready and current. The error says what was not
// steady at the deadline.
func (c *Cluster) WaitSteady(ctx context.Context, timeout time.Duration, deployments ...string) error {
	tlsCfg, err := rest.TLSConfigFor(c.Config)
	if err != nil {
		return err
	}
	if err := c.waitHTTP(ctx, "kube-apiserver", "https://"+c.APIServer+"/readyz", tlsCfg); err != nil {
		return fmt.Errorf("steady state: %w", err)
	}
	return poll(ctx, timeout, "the steady state", func() (bool, error) {
		err := c.Steady(ctx, deployments...)
		return err == nil, err
	})
}
