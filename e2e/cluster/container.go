package cluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// container runs one container of a pod: our binary in the pod's netns and a private mount
// namespace, restarted per restartPolicy, probed as the kubelet probes.
type container struct {
	r    *podRunner
	pod  *corev1.Pod // spec at start; a pod's containers are immutable
	spec *corev1.Container

	mu        sync.Mutex
	proc      *process
	started   metav1.Time
	restarts  int32
	ready     bool
	lastTerm  *corev1.ContainerStateTerminated
	curTerm   *corev1.ContainerStateTerminated
	waiting   string
	waitMsg   string
	stopping  bool
	stopGrace time.Duration
	stopC     chan struct{}
	doneC     chan struct{}
	restartC  chan struct{} // liveness failure
}

func newContainer(r *podRunner, pod *corev1.Pod, spec *corev1.Container) *container {
	return &container{r: r, pod: pod.DeepCopy(), spec: spec.DeepCopy(), waiting: "ContainerCreating",
		stopC: make(chan struct{}), doneC: make(chan struct{}), restartC: make(chan struct{}, 1)}
}

// binaryFor maps an image to one of our binaries: the longest matching substring wins.
func (c *container) binaryFor() (string, error) {
	images := c.r.n.c.opts.Images
	keys := make([]string, 0, len(images))
	for k := range images {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return len(keys[i]) > len(keys[j]) })
	for _, k := range keys {
		if strings.Contains(c.spec.Image, k) {
			return images[k], nil
		}
	}
	return "", fmt.Errorf("image %q matches no entry of the node agent's image map %v", c.spec.Image, keys)
}

func (c *container) logPath() string {
	return filepath.Join(c.r.n.c.LogDir, "pods", fmt.Sprintf("%s_%s_%s.log", c.r.ns, c.r.name, c.spec.Name))
}

// start launches the process: ip netns exec (netns + a fresh mount namespace) -> unshare --uts ->
// sh (mounts, hostname) -> exec our binary with the pod's command and args. Every step execs, so
// the PID we hold is the binary's own.
func (c *container) start(ctx context.Context) (*process, error) {
	bin, err := c.binaryFor()
	if err != nil {
		return nil, err
	}
	env, vars, err := c.r.envFor(ctx, c.pod, c.spec)
	if err != nil {
		return nil, err
	}
	script, err := c.r.mountScript(c.pod, c.spec)
	if err != nil {
		return nil, err
	}
	// The image's entrypoint is the binary; a command's first word names it inside the image.
	argv := []string{bin}
	if len(c.spec.Command) > 1 {
		argv = append(argv, c.spec.Command[1:]...)
	}
	argv = append(argv, c.spec.Args...)
	for i := 1; i < len(argv); i++ {
		argv[i] = expandVars(argv[i], vars)
	}
	c.r.mu.Lock()
	pn := c.r.net
	c.r.mu.Unlock()
	if pn == nil {
		return nil, fmt.Errorf("no sandbox")
	}
	full := append([]string{"ip", "netns", "exec", pn.netns, "unshare", "--uts", "--", "/bin/sh", "-c", script, "sh"}, argv...)
	if err := mkdirAll(filepath.Dir(c.logPath())); err != nil {
		return nil, err
	}
	p, err := startProcess(c.r.name+"/"+c.spec.Name, c.logPath(), c.r.dir, env, full...)
	if err != nil {
		return nil, err
	}
	return p, nil
}

// run keeps the container going: start, wait for exit or a stop or a liveness kill, restart with
// backoff per restartPolicy.
func (c *container) run() {
	defer close(c.doneC)
	ctx := c.r.n.ctx
	backoff := time.Second
	for {
		p, err := c.start(ctx)
		c.mu.Lock()
		if err != nil {
			c.waiting, c.waitMsg = "CreateContainerError", err.Error()
			c.mu.Unlock()
			c.r.logf("container %s: %v", c.spec.Name, err)
			c.r.poke()
			select {
			case <-c.stopC:
				return
			case <-time.After(backoff):
			}
			continue
		}
		c.proc, c.started, c.waiting, c.waitMsg, c.ready, c.curTerm = p, metav1.Now(), "", "", false, nil
		c.mu.Unlock()
		c.r.poke()
		probeCtx, cancelProbes := context.WithCancel(ctx)
		go c.probeLoop(probeCtx, p)
		var stopping bool
		select {
		case <-p.done:
		case <-c.stopC:
			stopping = true
		case <-c.restartC:
			c.r.logf("container %s: liveness probe failed, restarting", c.spec.Name)
			p.stop(ctx, c.grace())
		}
		cancelProbes()
		if stopping {
			c.mu.Lock()
			grace := c.stopGrace
			c.mu.Unlock()
			p.stop(context.Background(), grace)
			c.mu.Lock()
			c.proc, c.ready, c.curTerm = nil, false, terminated(p, c.started)
			c.mu.Unlock()
			return
		}
		<-p.done
		term := terminated(p, c.started)
		c.mu.Lock()
		c.proc, c.ready, c.lastTerm, c.curTerm = nil, false, term, term
		policy := c.pod.Spec.RestartPolicy
		again := policy == corev1.RestartPolicyAlways || policy == "" || (policy == corev1.RestartPolicyOnFailure && term.ExitCode != 0)
		if again {
			c.restarts++
			c.waiting, c.waitMsg = "CrashLoopBackOff", fmt.Sprintf("back-off %s restarting container %s", backoff, c.spec.Name)
			c.curTerm = nil
		}
		c.mu.Unlock()
		c.r.logf("container %s exited (code %d), restart=%v", c.spec.Name, term.ExitCode, again)
		c.r.poke()
		if !again {
			<-c.stopC
			return
		}
		select {
		case <-c.stopC:
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 10*time.Second)
	}
}

func terminated(p *process, started metav1.Time) *corev1.ContainerStateTerminated {
	t := &corev1.ContainerStateTerminated{StartedAt: started, FinishedAt: metav1.Now(), Reason: "Completed"}
	if p.cmd.ProcessState != nil {
		t.ExitCode = int32(p.cmd.ProcessState.ExitCode())
		if ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			t.ExitCode = 128 + int32(ws.Signal())
			t.Signal = int32(ws.Signal())
		}
	}
	if t.ExitCode != 0 {
		t.Reason = "Error"
	}
	return t
}

func (c *container) grace() time.Duration {
	if g := c.pod.Spec.TerminationGracePeriodSeconds; g != nil {
		return time.Duration(*g) * time.Second
	}
	return 30 * time.Second
}

// stop ends the container for good: SIGTERM, up to grace, SIGKILL.
func (c *container) stop(grace time.Duration) {
	c.mu.Lock()
	if !c.stopping {
		c.stopping, c.stopGrace = true, grace
		close(c.stopC)
	}
	c.mu.Unlock()
	<-c.doneC // run() delivers SIGTERM/SIGKILL to whatever process it has, even one just started
}

func (c *container) pid() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc == nil || c.proc.exited() {
		return 0
	}
	return c.proc.pid()
}

func (c *container) status() corev1.ContainerStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := corev1.ContainerStatus{Name: c.spec.Name, Image: c.spec.Image, ImageID: c.spec.Image, RestartCount: c.restarts, Ready: c.ready}
	switch {
	case c.proc != nil:
		s.State.Running = &corev1.ContainerStateRunning{StartedAt: c.started}
		s.ContainerID = "dnspulse://" + strconv.Itoa(c.proc.pid())
		s.Started = ptrBool(true)
	case c.curTerm != nil:
		s.State.Terminated = c.curTerm
		s.Started = ptrBool(false)
	default:
		s.State.Waiting = &corev1.ContainerStateWaiting{Reason: c.waiting, Message: c.waitMsg}
		s.Started = ptrBool(false)
	}
	if c.lastTerm != nil {
		s.LastTerminationState.Terminated = c.lastTerm
	}
	return s
}

func ptrBool(b bool) *bool { return &b }

// probeLoop runs the readiness and liveness probes with the kubelet's semantics: initial delay,
// period, timeout, success and failure thresholds. Without a readiness probe the container is
// ready once started.
func (c *container) probeLoop(ctx context.Context, p *process) {
	if c.spec.ReadinessProbe == nil {
		c.setReady(true)
	} else {
		go c.probeWorker(ctx, p, c.spec.ReadinessProbe, func(ok bool) { c.setReady(ok) })
	}
	if c.spec.LivenessProbe != nil {
		go c.probeWorker(ctx, p, c.spec.LivenessProbe, func(ok bool) {
			if !ok {
				select {
				case c.restartC <- struct{}{}:
				default:
				}
			}
		})
	}
}

func (c *container) setReady(ok bool) {
	c.mu.Lock()
	changed := c.ready != ok
	c.ready = ok
	c.mu.Unlock()
	if changed {
		c.r.poke()
	}
}

func (c *container) probeWorker(ctx context.Context, p *process, pr *corev1.Probe, result func(bool)) {
	period := time.Duration(max(pr.PeriodSeconds, 1)) * time.Second
	timeout := time.Duration(max(pr.TimeoutSeconds, 1)) * time.Second
	succT, failT := max(pr.SuccessThreshold, 1), max(pr.FailureThreshold, 1)
	select {
	case <-ctx.Done():
		return
	case <-time.After(time.Duration(pr.InitialDelaySeconds) * time.Second):
	}
	var succ, fail int32
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		if p.exited() {
			return
		}
		if err := c.probeOnce(ctx, p, pr, timeout); err == nil {
			succ, fail = succ+1, 0
			if succ >= succT {
				result(true)
			}
		} else {
			succ, fail = 0, fail+1
			if fail >= failT {
				result(false)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (c *container) resolvePort(port intstr.IntOrString) (int, error) {
	if port.Type == intstr.Int {
		return port.IntValue(), nil
	}
	for _, cp := range c.spec.Ports {
		if cp.Name == port.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	return 0, fmt.Errorf("named port %q not found in container %s", port.StrVal, c.spec.Name)
}

func (c *container) probeOnce(ctx context.Context, p *process, pr *corev1.Probe, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c.r.mu.Lock()
	pn := c.r.net
	c.r.mu.Unlock()
	if pn == nil {
		return fmt.Errorf("no sandbox")
	}
	switch {
	case pr.HTTPGet != nil:
		h := pr.HTTPGet
		port, err := c.resolvePort(h.Port)
		if err != nil {
			return err
		}
		host := h.Host
		if host == "" {
			host = pn.ip.String()
		}
		scheme := "http"
		if h.Scheme == corev1.URISchemeHTTPS {
			scheme = "https"
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s://%s%s", scheme, net.JoinHostPort(host, strconv.Itoa(port)), h.Path), nil)
		if err != nil {
			return err
		}
		for _, hd := range h.HTTPHeaders {
			req.Header.Set(hd.Name, hd.Value)
		}
		tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true} //nolint:gosec // the kubelet skips verification too
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("HTTP probe status %d", resp.StatusCode)
		}
		return nil
	case pr.TCPSocket != nil:
		port, err := c.resolvePort(pr.TCPSocket.Port)
		if err != nil {
			return err
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(pn.ip.String(), strconv.Itoa(port)))
		if err != nil {
			return err
		}
		return conn.Close()
	case pr.Exec != nil:
		args := append([]string{"-t", strconv.Itoa(p.pid()), "-n", "-m", "-u", "--"}, pr.Exec.Command...)
		return exec.CommandContext(ctx, "nsenter", args...).Run()
	}
	return fmt.Errorf("unsupported probe handler (gRPC probes are not implemented by the e2e node agent)")
}
