package cluster

import (
	"net"
	"os"
	"os/exec"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// fakeRunner is a pod with one running container whose readiness the test sets.
func fakeRunner(ready bool) *podRunner {
	c := &Cluster{Gateway: net.IPv4(198, 18, 1, 1)}
	r := &podRunner{n: &Node{c: c}, net: &podNet{ip: net.IPv4(198, 18, 1, 2)}}
	cmd := exec.Command("true")
	cmd.Process = &os.Process{Pid: 4242}
	r.containers = []*container{{r: r, spec: &corev1.Container{Name: "c"}, proc: &process{cmd: cmd, done: make(chan struct{})}, ready: ready}}
	return r
}

func condStatus(st *corev1.PodStatus, t corev1.PodConditionType) corev1.ConditionStatus {
	if c := findCondition(st.Conditions, t); c != nil {
		return c.Status
	}
	return "absent"
}

func TestReadyNeedsReadinessGates(t *testing.T) {
	const gate = corev1.PodConditionType("dnspulse.io/serving")
	pod := func(gateStatus corev1.ConditionStatus) *corev1.Pod {
		p := &corev1.Pod{Spec: corev1.PodSpec{ReadinessGates: []corev1.PodReadinessGate{{ConditionType: gate}}}}
		if gateStatus != "" {
			p.Status.Conditions = []corev1.PodCondition{{Type: gate, Status: gateStatus}}
		}
		return p
	}
	// Like a kubelet, the node agent never sets a readiness-gate condition (pulse and the
	// healer do): absent, the pod is not Ready.
	for _, tc := range []struct {
		name      string
		ready     bool
		gate      corev1.ConditionStatus
		wantReady corev1.ConditionStatus
		wantGate  corev1.ConditionStatus
		wantPodIP string
	}{
		{"gate absent: left to its owners", true, "", corev1.ConditionFalse, "absent", "198.18.1.2"},
		{"gate False is never overridden", true, corev1.ConditionFalse, corev1.ConditionFalse, corev1.ConditionFalse, "198.18.1.2"},
		{"gate True, container not ready", false, corev1.ConditionTrue, corev1.ConditionFalse, corev1.ConditionTrue, "198.18.1.2"},
		{"gate True, container ready", true, corev1.ConditionTrue, corev1.ConditionTrue, corev1.ConditionTrue, "198.18.1.2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := fakeRunner(tc.ready)
			st := r.computeStatus(pod(tc.gate), nil)
			if got := condStatus(st, corev1.PodReady); got != tc.wantReady {
				t.Errorf("Ready = %s, want %s", got, tc.wantReady)
			}
			if got := condStatus(st, gate); got != tc.wantGate {
				t.Errorf("%s = %s, want %s", gate, got, tc.wantGate)
			}
			if got := condStatus(st, corev1.ContainersReady); (got == corev1.ConditionTrue) != tc.ready {
				t.Errorf("ContainersReady = %s with container ready %v", got, tc.ready)
			}
			if st.PodIP != tc.wantPodIP || st.Phase != corev1.PodRunning {
				t.Errorf("podIP %q phase %s", st.PodIP, st.Phase)
			}
		})
	}
}

func TestExpandVars(t *testing.T) {
	vars := map[string]string{"POD_NAME": "coredns-1", "NS": "kube-system"}
	for in, want := range map[string]string{
		"--replica=$(POD_NAME)":   "--replica=coredns-1",
		"$(NS)/$(POD_NAME)":       "kube-system/coredns-1",
		"$(UNKNOWN) stays":        "$(UNKNOWN) stays",
		"no refs":                 "no refs",
		"unterminated $(POD_NAME": "unterminated $(POD_NAME",
	} {
		if got := expandVars(in, vars); got != want {
			t.Errorf("expandVars(%q) = %q, want %q", in, got, want)
		}
	}
}

// A status the node agent wrote is a fixed point: computing it again from the written pod changes
// nothing that would be written again (a second write races every reader that preconditions on
// the pod's resourceVersion, such as the Eviction API for an unready pod).
func TestStatusIsStable(t *testing.T) {
	const gate = corev1.PodConditionType("dnspulse.io/serving")
	for _, gateStatus := range []corev1.ConditionStatus{corev1.ConditionTrue, corev1.ConditionFalse} {
		for _, ready := range []bool{true, false} {
			r := fakeRunner(ready)
			pod := &corev1.Pod{Spec: corev1.PodSpec{ReadinessGates: []corev1.PodReadinessGate{{ConditionType: gate}}}}
			pod.Status.Conditions = []corev1.PodCondition{{Type: gate, Status: gateStatus, Reason: "ByTheHealer"}}
			first := r.computeStatus(pod, nil)
			pod.Status = *first
			second := r.computeStatus(pod, nil)
			if !reflect.DeepEqual(comparable(first), comparable(second)) {
				t.Errorf("gate %s, container ready %v: a second computation differs:\n%+v\n%+v", gateStatus, ready, comparable(first), comparable(second))
			}
		}
	}
}
