package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
)

// podRunner owns one pod's sandbox (netns, veth, volumes) and containers from the first time the
// node agent sees the pod until its deletion is finalized.
type podRunner struct {
	n             *Node
	uid           types.UID
	ns, name      string
	slot          int
	dir           string
	pokeC         chan struct{}
	killC         chan struct{} // closed by shutdown: the node agent is going away
	startTime     metav1.Time
	mu            sync.Mutex
	net           *podNet
	containers    []*container
	terminating   bool
	lossRule      string            // probability of the Loss fault's iptables rules, "" when none
	cmSeen        map[string]string // ConfigMap volume -> resourceVersion written (run goroutine only)
	lastCMVersion string
	lastCMSync    time.Time
	delay         *delayer
}

func newPodRunner(n *Node, pod *corev1.Pod, slot int) *podRunner {
	return &podRunner{
		n: n, uid: pod.UID, ns: pod.Namespace, name: pod.Name, slot: slot,
		dir:   filepath.Join(n.c.StateDir, "pods", string(pod.UID)),
		pokeC: make(chan struct{}, 1), killC: make(chan struct{}),
		startTime: metav1.Now(), cmSeen: map[string]string{},
	}
}

func (r *podRunner) poke() {
	select {
	case r.pokeC <- struct{}{}:
	default:
	}
}

func (r *podRunner) shutdown() {
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-r.killC:
	default:
		close(r.killC)
	}
	r.poke()
}

func (r *podRunner) isTerminating() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.terminating
}

func (r *podRunner) logf(format string, args ...any) {
	r.n.c.opts.Logf("pod %s/%s: "+format, append([]any{r.ns, r.name}, args...)...)
}

// resyncPeriod is how often a pod's loop runs without an event, like the kubelet's pod worker resync.
const resyncPeriod = 2 * time.Second

// run is the pod's life: set up the sandbox, start containers, keep status current on every
// change, and on deletion terminate gracefully and finalize the delete. A status update that
// failed (the apiserver away) is retried with backoff, not only at the next resync.
func (r *podRunner) run() {
	ctx := r.n.ctx
	defer r.teardown()
	status := r.n.retrier(CallPodStatus, r.ns+"/"+r.name)
	var setupErr error
	for {
		wait := resyncPeriod
		if status.failing() {
			wait = min(wait, status.delay())
		}
		select {
		case <-r.killC:
			r.terminate(2 * time.Second)
			return
		case <-r.pokeC:
		case <-time.After(wait):
		}
		pod := r.n.current(r.ns, r.name, r.uid)
		if pod == nil { // deleted with grace 0 by someone else: kill at once
			r.terminate(0)
			return
		}
		if pod.DeletionTimestamp != nil {
			grace := 30 * time.Second
			if pod.DeletionGracePeriodSeconds != nil {
				grace = time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
			}
			r.mu.Lock()
			r.terminating = true
			r.mu.Unlock()
			r.logf("terminating (grace %s)", grace)
			r.terminate(grace)
			r.teardown()
			r.logf("terminated; deleting the pod")
			r.finalizeDelete(ctx)
			return
		}
		if r.net == nil || setupErr != nil {
			if setupErr = r.setup(ctx, pod); setupErr != nil {
				r.logf("sandbox setup failed (retrying): %v", setupErr)
				status.result(r.reportStatus(ctx, setupErr))
				continue
			}
			r.startContainers(pod)
			r.lastCMSync = time.Now()
		}
		if time.Since(r.lastCMSync) > 5*time.Second {
			r.lastCMSync = time.Now()
			r.syncConfigMaps(ctx, pod)
		}
		status.result(r.reportStatus(ctx, nil))
	}
}

// finalizeDelete removes the terminated pod from the apiserver (grace 0, UID precondition), as the
// kubelet's status manager does once the containers are gone, and retries until that is done:
// a DELETE lost while the apiserver restarts would leave the pod Terminating for ever. NotFound
// (someone deleted it) and Conflict (the name now belongs to another pod) end it too. Only the
// node agent's own stop ends it earlier.
func (r *podRunner) finalizeDelete(ctx context.Context) {
	rt := r.n.retrier(CallPodDelete, r.ns+"/"+r.name)
	_ = rt.until(ctx, r.killC, func(ctx context.Context) error {
		return r.n.c.Client.CoreV1().Pods(r.ns).Delete(ctx, r.name, metav1.DeleteOptions{
			GracePeriodSeconds: ptr.To[int64](0), Preconditions: &metav1.Preconditions{UID: &r.uid},
		})
	}, func(err error) bool { return apierrors.IsNotFound(err) || apierrors.IsConflict(err) })
}

func (r *podRunner) setup(ctx context.Context, pod *corev1.Pod) error {
	r.mu.Lock()
	old := r.net
	r.net = nil
	r.mu.Unlock()
	if old != nil { // a retry after a failed setup
		_ = old.remove(ctx)
		r.n.c.net.release(old.ip)
	}
	ip, err := r.n.c.net.allocate()
	if err != nil {
		return err
	}
	id := string(r.uid)
	if len(id) > 8 {
		id = id[:8]
	}
	pn, err := r.n.c.net.addPod(ctx, id, r.slot, ip)
	r.mu.Lock()
	r.net = pn
	r.mu.Unlock()
	if err != nil {
		return fmt.Errorf("network: %w", err)
	}
	if err := os.MkdirAll(r.dir, 0o755); err != nil {
		return err
	}
	if err := r.writeVolumes(ctx, pod); err != nil {
		return err
	}
	if err := r.writeResolvConf(ctx, pod); err != nil {
		return err
	}
	hosts := fmt.Sprintf("127.0.0.1\tlocalhost\n::1\tlocalhost\n%s\t%s\n", ip, pod.Name)
	return os.WriteFile(filepath.Join(r.dir, "hosts"), []byte(hosts), 0o644)
}

// writeResolvConf gives the pod the resolv.conf its dnsPolicy asks for. Default (CoreDNS's own
// policy) names the harness's upstream on the bridge; ClusterFirst names the Ready kube-dns pods
// directly, since without kube-proxy the Service ClusterIP routes nowhere.
func (r *podRunner) writeResolvConf(ctx context.Context, pod *corev1.Pod) error {
	var b strings.Builder
	switch pod.Spec.DNSPolicy {
	case corev1.DNSDefault:
		fmt.Fprintf(&b, "nameserver %s\n", r.n.c.Gateway)
	case corev1.DNSNone:
	default:
		ips, err := r.n.c.readyDNSPodIPs(ctx)
		if err != nil {
			return fmt.Errorf("resolv.conf: the kube-dns pods: %w", err)
		}
		if len(ips) == 0 {
			ips = []string{r.n.c.DNSServiceIP}
		}
		for i, ip := range ips {
			if i == 3 {
				break
			}
			fmt.Fprintf(&b, "nameserver %s\n", ip)
		}
		fmt.Fprintf(&b, "search %s.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n", pod.Namespace)
	}
	if dc := pod.Spec.DNSConfig; dc != nil {
		for _, ns := range dc.Nameservers {
			fmt.Fprintf(&b, "nameserver %s\n", ns)
		}
		if len(dc.Searches) > 0 {
			fmt.Fprintf(&b, "search %s\n", strings.Join(dc.Searches, " "))
		}
	}
	return os.WriteFile(filepath.Join(r.dir, "resolv.conf"), []byte(b.String()), 0o644)
}

func (r *podRunner) startContainers(pod *corev1.Pod) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.containers) > 0 {
		return
	}
	for i := range pod.Spec.Containers {
		c := newContainer(r, pod, &pod.Spec.Containers[i])
		r.containers = append(r.containers, c)
		go c.run()
	}
}

// terminate stops every container: SIGTERM, up to grace, SIGKILL.
func (r *podRunner) terminate(grace time.Duration) {
	r.mu.Lock()
	cs := append([]*container(nil), r.containers...)
	r.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Add(1)
		go func() { defer wg.Done(); c.stop(grace) }()
	}
	wg.Wait()
}

// teardown removes the sandbox. Mounts live in the containers' private mount namespaces and went
// away with their processes; the netns and veth go here. Idempotent.
func (r *podRunner) teardown() {
	r.terminate(0)
	r.mu.Lock()
	pn := r.net
	r.net = nil
	dl := r.delay
	r.delay = nil
	r.mu.Unlock()
	if dl != nil {
		dl.close()
	}
	if pn != nil {
		began := time.Now()
		if err := pn.remove(context.Background()); err != nil {
			r.logf("teardown: %v", err)
		}
		// The kernel destroys a netns asynchronously under the rtnl lock, and removing the veth may
		// wait for it on a loaded machine. Said, since the pod's DELETE waits for the removal.
		if d := time.Since(began); d > 5*time.Second {
			r.logf("sandbox removal took %s", d.Round(time.Millisecond))
		}
		r.n.c.net.release(pn.ip)
	}
	_ = os.RemoveAll(r.dir)
}

// reportStatus writes the pod status the kubelet would: phase, IPs, container statuses, and the
// conditions, with Ready = containers ready AND every readiness gate True. The error is nil when
// the status is written, unchanged, or no longer ours to write (the pod gone or terminating).
func (r *podRunner) reportStatus(ctx context.Context, setupErr error) error {
	ctx, cancel := context.WithTimeout(ctx, apiCallTimeout)
	defer cancel()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		pod, err := r.n.c.Client.CoreV1().Pods(r.ns).Get(ctx, r.name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if pod.UID != r.uid || pod.DeletionTimestamp != nil {
			return nil
		}
		status := r.computeStatus(pod, setupErr)
		if reflect.DeepEqual(comparable(status), comparable(&pod.Status)) {
			return nil
		}
		pod.Status = *status
		_, err = r.n.c.Client.CoreV1().Pods(r.ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
		return err
	})
	if apierrors.IsNotFound(err) || r.n.ctx.Err() != nil {
		return nil
	}
	return err
}

// comparable strips timestamps so an unchanged status does not cause a write every resync.
func comparable(s *corev1.PodStatus) *corev1.PodStatus {
	c := s.DeepCopy()
	c.StartTime = nil
	for i := range c.Conditions {
		c.Conditions[i].LastTransitionTime = metav1.Time{}
		c.Conditions[i].LastProbeTime = metav1.Time{}
	}
	sort.Slice(c.Conditions, func(i, j int) bool { return c.Conditions[i].Type < c.Conditions[j].Type })
	for i := range c.ContainerStatuses {
		cs := &c.ContainerStatuses[i]
		if cs.State.Running != nil {
			cs.State.Running = &corev1.ContainerStateRunning{}
		}
		if cs.State.Terminated != nil {
			cs.State.Terminated.StartedAt, cs.State.Terminated.FinishedAt = metav1.Time{}, metav1.Time{}
		}
		if cs.LastTerminationState.Terminated != nil {
			cs.LastTerminationState.Terminated.StartedAt, cs.LastTerminationState.Terminated.FinishedAt = metav1.Time{}, metav1.Time{}
		}
	}
	return c
}

func (r *podRunner) computeStatus(pod *corev1.Pod, setupErr error) *corev1.PodStatus {
	st := pod.Status.DeepCopy()
	now := metav1.Now()
	st.StartTime = &r.startTime
	st.HostIP = r.n.c.Gateway.String()
	st.HostIPs = []corev1.HostIP{{IP: st.HostIP}}
	r.mu.Lock()
	pn := r.net
	cs := append([]*container(nil), r.containers...)
	r.mu.Unlock()
	if pn != nil && setupErr == nil {
		st.PodIP = pn.ip.String()
		st.PodIPs = []corev1.PodIP{{IP: st.PodIP}}
	}
	st.ContainerStatuses = nil
	allReady, running, failed, succeeded := len(cs) > 0, 0, 0, 0
	for _, c := range cs {
		s := c.status()
		st.ContainerStatuses = append(st.ContainerStatuses, s)
		allReady = allReady && s.Ready
		switch {
		case s.State.Running != nil:
			running++
		case s.State.Terminated != nil && s.State.Terminated.ExitCode == 0:
			succeeded++
		case s.State.Terminated != nil:
			failed++
		}
	}
	switch {
	case len(cs) > 0 && running > 0:
		st.Phase = corev1.PodRunning
	case len(cs) > 0 && succeeded == len(cs):
		st.Phase = corev1.PodSucceeded
	case len(cs) > 0 && failed+succeeded == len(cs) && pod.Spec.RestartPolicy != corev1.RestartPolicyAlways:
		st.Phase = corev1.PodFailed
	case len(cs) > 0 && running == 0 && pod.Spec.RestartPolicy == corev1.RestartPolicyAlways:
		st.Phase = corev1.PodRunning // between restarts, as the kubelet reports it
	default:
		st.Phase = corev1.PodPending
	}
	if setupErr != nil {
		st.Phase = corev1.PodPending
		st.Message = "sandbox: " + setupErr.Error()
	} else {
		st.Message = ""
	}

	gatesOK := true
	var missing []string
	for _, g := range pod.Spec.ReadinessGates {
		if c := findCondition(st.Conditions, g.ConditionType); c == nil || c.Status != corev1.ConditionTrue {
			gatesOK = false
			missing = append(missing, string(g.ConditionType))
		}
	}
	setCondition(st, corev1.PodReadyToStartContainers, pn != nil && setupErr == nil, "", "", now)
	setCondition(st, corev1.PodInitialized, true, "", "", now)
	setCondition(st, corev1.ContainersReady, allReady, "ContainersNotReady", "", now)
	readyReason, readyMsg := "", ""
	if !allReady {
		readyReason = "ContainersNotReady"
	} else if !gatesOK {
		readyReason, readyMsg = "ReadinessGatesNotReady", "corresponding condition of pod readiness gate "+strings.Join(missing, ", ")+" does not exist or is not True"
	}
	setCondition(st, corev1.PodReady, allReady && gatesOK, readyReason, readyMsg, now)
	return st
}

func findCondition(conds []corev1.PodCondition, t corev1.PodConditionType) *corev1.PodCondition {
	for i := range conds {
		if conds[i].Type == t {
			return &conds[i]
		}
	}
	return nil
}

func setCondition(st *corev1.PodStatus, t corev1.PodConditionType, ok bool, reason, msg string, now metav1.Time) {
	status := corev1.ConditionFalse
	if ok {
		status, reason, msg = corev1.ConditionTrue, "", ""
	}
	if c := findCondition(st.Conditions, t); c != nil {
		if c.Status != status {
			c.LastTransitionTime = now
		}
		c.Status, c.Reason, c.Message = status, reason, msg
		return
	}
	st.Conditions = append(st.Conditions, corev1.PodCondition{Type: t, Status: status, Reason: reason, Message: msg, LastTransitionTime: now})
}

// readyDNSPodIPs are the ready endpoints of kube-system/kube-dns, for ClusterFirst pods.
func (c *Cluster) readyDNSPodIPs(ctx context.Context) ([]string, error) {
	pods, err := c.Client.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "k8s-app=kube-dns"})
	if err != nil {
		return nil, err
	}
	var ips []string
	for _, p := range pods.Items {
		if p.Status.PodIP != "" && p.DeletionTimestamp == nil && podReady(&p) {
			ips = append(ips, p.Status.PodIP)
		}
	}
	sort.Strings(ips)
	return ips, nil
}

func podReady(p *corev1.Pod) bool {
	c := findCondition(p.Status.Conditions, corev1.PodReady)
	return c != nil && c.Status == corev1.ConditionTrue
}

// envFor builds a container's environment as the kubelet does: the in-cluster variables (pointing
// straight at the apiserver on the bridge: there is no kube-proxy behind the ClusterIP), then env
// and envFrom with ConfigMap, Secret and downward API references resolved.
func (r *podRunner) envFor(ctx context.Context, pod *corev1.Pod, ctr *corev1.Container) ([]string, map[string]string, error) {
	c := r.n.c
	host, port, _ := net.SplitHostPort(c.APIServer)
	vars := map[string]string{}
	order := []string{}
	set := func(k, v string) {
		if _, ok := vars[k]; !ok {
			order = append(order, k)
		}
		vars[k] = v
	}
	set("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	set("HOSTNAME", pod.Name)
	set("KUBERNETES_SERVICE_HOST", host)
	set("KUBERNETES_SERVICE_PORT", port)
	set("KUBERNETES_SERVICE_PORT_HTTPS", port)
	set("KUBERNETES_PORT", "tcp://"+c.APIServer)
	set("KUBERNETES_PORT_443_TCP", "tcp://"+c.APIServer)
	set("KUBERNETES_PORT_443_TCP_PROTO", "tcp")
	set("KUBERNETES_PORT_443_TCP_ADDR", host)
	set("KUBERNETES_PORT_443_TCP_PORT", port)
	for _, ef := range ctr.EnvFrom {
		data, err := r.refData(ctx, ef.ConfigMapRef, ef.SecretRef)
		if err != nil {
			return nil, nil, fmt.Errorf("container %s envFrom: %w", ctr.Name, err)
		}
		for k, v := range data {
			set(ef.Prefix+k, v)
		}
	}
	for _, e := range ctr.Env {
		v, err := r.envValue(ctx, pod, e)
		if err != nil {
			return nil, nil, fmt.Errorf("container %s env %s: %w", ctr.Name, e.Name, err)
		}
		set(e.Name, expandVars(v, vars))
	}
	env := []string{markerEnv + "=" + c.StateDir}
	for _, k := range order {
		env = append(env, k+"="+vars[k])
	}
	return env, vars, nil
}

func (r *podRunner) refData(ctx context.Context, cm *corev1.ConfigMapEnvSource, sec *corev1.SecretEnvSource) (map[string]string, error) {
	switch {
	case cm != nil:
		o, err := r.n.c.Client.CoreV1().ConfigMaps(r.ns).Get(ctx, cm.Name, metav1.GetOptions{})
		if err != nil {
			if cm.Optional != nil && *cm.Optional {
				return nil, nil
			}
			return nil, err
		}
		return o.Data, nil
	case sec != nil:
		o, err := r.n.c.Client.CoreV1().Secrets(r.ns).Get(ctx, sec.Name, metav1.GetOptions{})
		if err != nil {
			if sec.Optional != nil && *sec.Optional {
				return nil, nil
			}
			return nil, err
		}
		out := map[string]string{}
		for k, v := range o.Data {
			out[k] = string(v)
		}
		return out, nil
	}
	return nil, nil
}

func (r *podRunner) envValue(ctx context.Context, pod *corev1.Pod, e corev1.EnvVar) (string, error) {
	vf := e.ValueFrom
	if vf == nil {
		return e.Value, nil
	}
	switch {
	case vf.FieldRef != nil:
		return r.fieldValue(pod, vf.FieldRef.FieldPath)
	case vf.ResourceFieldRef != nil:
		return "0", nil
	case vf.ConfigMapKeyRef != nil:
		o, err := r.n.c.Client.CoreV1().ConfigMaps(r.ns).Get(ctx, vf.ConfigMapKeyRef.Name, metav1.GetOptions{})
		if err != nil {
			return "", err
		}
		return o.Data[vf.ConfigMapKeyRef.Key], nil
	case vf.SecretKeyRef != nil:
		o, err := r.n.c.Client.CoreV1().Secrets(r.ns).Get(ctx, vf.SecretKeyRef.Name, metav1.GetOptions{})
		if err != nil {
			return "", err
		}
		return string(o.Data[vf.SecretKeyRef.Key]), nil
	}
	return "", errors.New("unsupported valueFrom")
}

func (r *podRunner) fieldValue(pod *corev1.Pod, path string) (string, error) {
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.podIP":
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.net != nil {
			return r.net.ip.String(), nil
		}
		return "", nil
	case "status.hostIP":
		return r.n.c.Gateway.String(), nil
	}
	for _, m := range []struct {
		prefix string
		from   map[string]string
	}{{"metadata.labels['", pod.Labels}, {"metadata.annotations['", pod.Annotations}} {
		if strings.HasPrefix(path, m.prefix) && strings.HasSuffix(path, "']") {
			return m.from[strings.TrimSuffix(strings.TrimPrefix(path, m.prefix), "']")], nil
		}
	}
	return "", fmt.Errorf("unsupported fieldRef %q", path)
}

// expandVars replaces $(NAME) with earlier variables, as the kubelet does in env, command and args.
func expandVars(s string, vars map[string]string) string {
	if !strings.Contains(s, "$(") {
		return s
	}
	var b strings.Builder
	for {
		i := strings.Index(s, "$(")
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		j := strings.IndexByte(s[i:], ')')
		if j < 0 {
			b.WriteString(s)
			return b.String()
		}
		name := s[i+2 : i+j]
		b.WriteString(s[:i])
		if v, ok := vars[name]; ok {
			b.WriteString(v)
		} else {
			b.WriteString(s[i : i+j+1])
		}
		s = s[i+j+1:]
	}
}

func signalPID(pid int, sig syscall.Signal) error {
	if pid <= 0 {
		return errors.New("no process")
	}
	return syscall.Kill(pid, sig)
}
