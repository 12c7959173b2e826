package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
)

// Node is the in-process node agent: the part of a kubelet the tests need. It registers a Node,
// keeps its Lease fresh, and runs every pod bound to it as real processes in their own network
// and mount namespaces.
type Node struct {
	Name string
	c    *Cluster

	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	lister  corelisters.PodLister
	mu      sync.Mutex
	pods    map[types.UID]*podRunner
	done    map[types.UID]bool // finished runners: late events for them must not start a pod again
	slot    int
	stopped bool
	failed  map[string]int // failed API attempts per Call* name
}

func newNode(c *Cluster) *Node {
	return &Node{Name: c.opts.NodeName, c: c, pods: map[types.UID]*podRunner{}, done: map[types.UID]bool{}, failed: map[string]int{}}
}

func (n *Node) start(ctx context.Context) error {
	client := n.c.Client
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: map[string]string{
		"kubernetes.io/hostname": n.Name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
	}}}
	created, err := client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("register node %s: %w", n.Name, err)
	}
	res := corev1.ResourceList{
		corev1.ResourceCPU: resource.MustParse("16"), corev1.ResourceMemory: resource.MustParse("64Gi"), corev1.ResourcePods: resource.MustParse("110"),
	}
	created.Status = corev1.NodeStatus{
		Capacity: res, Allocatable: res,
		Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.c.Gateway.String()}, {Type: corev1.NodeHostName, Address: n.Name}},
		NodeInfo:  corev1.NodeSystemInfo{KubeletVersion: "v1.37.2-dnspulse", OperatingSystem: "linux", Architecture: "amd64", ContainerRuntimeVersion: "dnspulse-node-agent://1"},
	}
	setNodeConditions(created, time.Now())
	if _, err := client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("node %s status: %w", n.Name, err)
	}

	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.wg.Add(1)
	go n.heartbeat()

	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", n.Name).String()
	}))
	inf := factory.Core().V1().Pods()
	n.lister = inf.Lister()
	_, err = inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { n.observe(obj, true) },
		UpdateFunc: func(_, obj any) { n.observe(obj, true) },
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			n.observe(obj, false)
		},
	})
	if err != nil {
		return err
	}
	factory.Start(n.ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.Informer().HasSynced) {
		return errors.New("pod informer did not sync")
	}
	return nil
}

func setNodeConditions(node *corev1.Node, now time.Time) {
	t := metav1.NewTime(now)
	cond := func(typ corev1.NodeConditionType, st corev1.ConditionStatus, reason string) corev1.NodeCondition {
		return corev1.NodeCondition{Type: typ, Status: st, Reason: reason, LastHeartbeatTime: t, LastTransitionTime: t}
	}
	node.Status.Conditions = []corev1.NodeCondition{
		cond(corev1.NodeReady, corev1.ConditionTrue, "KubeletReady"),
		cond(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory"),
		cond(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure"),
		cond(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID"),
	}
}

// Node heartbeats as a kubelet sends them: the Lease renewed every leaseRenewInterval (what the
// node lifecycle controller watches), the Ready condition posted when it is not what the node
// reports (the controller sets it Unknown after an apiserver outage longer than its grace period)
// or older than nodeStatusMaxAge. A failed call is retried with backoff rather than at the next tick.
const (
	leaseRenewInterval = 10 * time.Second
	leaseDuration      = 40
	nodeStatusMaxAge   = time.Minute
)

func (n *Node) heartbeat() {
	defer n.wg.Done()
	lease := n.retrier(CallNodeLease, "kube-node-lease/"+n.Name)
	status := n.retrier(CallNodeStatus, n.Name)
	for {
		lease.result(n.renewLease())
		status.result(n.syncNodeStatus())
		wait := leaseRenewInterval
		if lease.failing() {
			wait = lease.delay()
		}
		if status.failing() {
			wait = min(wait, status.delay())
		}
		select {
		case <-n.ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

func (n *Node) renewLease() error {
	ctx, cancel := context.WithTimeout(n.ctx, apiCallTimeout)
	defer cancel()
	leases := n.c.Client.CoordinationV1().Leases("kube-node-lease")
	now := metav1.NewMicroTime(time.Now())
	l, err := leases.Get(ctx, n.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = leases.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: n.Name, Namespace: "kube-node-lease"},
			Spec:       coordinationv1.LeaseSpec{HolderIdentity: ptr.To(n.Name), LeaseDurationSeconds: ptr.To[int32](leaseDuration), RenewTime: &now},
		}, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	l.Spec.RenewTime = &now
	_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
	return err
}

func (n *Node) syncNodeStatus() error {
	ctx, cancel := context.WithTimeout(n.ctx, apiCallTimeout)
	defer cancel()
	node, err := n.c.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue && time.Since(c.LastHeartbeatTime.Time) < nodeStatusMaxAge {
			return nil
		}
	}
	setNodeConditions(node, time.Now())
	_, err = n.c.Client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
	return err
}

func (n *Node) countFailure(call string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.failed[call]++
}

// APIFailures is how many attempts of call (CallPodStatus, CallPodDelete, CallNodeLease,
// CallNodeStatus) have failed so far; each was retried until it succeeded.
func (n *Node) APIFailures(call string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.failed[call]
}

// observe hands a pod event to its runner, creating one for a new pod.
func (n *Node) observe(obj any, mayStart bool) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.stopped {
		return
	}
	r := n.pods[pod.UID]
	if r == nil {
		if !mayStart || n.done[pod.UID] {
			return
		}
		if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			return
		}
		n.slot++
		r = newPodRunner(n, pod, n.slot)
		n.pods[pod.UID] = r
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			r.run()
			n.mu.Lock()
			delete(n.pods, r.uid)
			n.done[r.uid] = true
			n.mu.Unlock()
		}()
	}
	r.poke()
}

// current returns the pod as the informer last saw it, nil once it is gone from the apiserver.
func (n *Node) current(ns, name string, uid types.UID) *corev1.Pod {
	p, err := n.lister.Pods(ns).Get(name)
	if err != nil || p.UID != uid {
		return nil
	}
	return p
}

// Pod returns the runner of the live pod ns/name on this node, for fault injection.
func (n *Node) pod(ns, name string) (*podRunner, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, r := range n.pods {
		if r.ns == ns && r.name == name && !r.isTerminating() {
			return r, nil
		}
	}
	return nil, fmt.Errorf("pod %s/%s is not running on node %s", ns, name, n.Name)
}

// stop kills every pod (short grace: the control plane goes down next) and removes their
// namespaces, links and folders.
func (n *Node) stop(ctx context.Context) error {
	n.mu.Lock()
	n.stopped = true
	runners := make([]*podRunner, 0, len(n.pods))
	for _, r := range n.pods {
		runners = append(runners, r)
	}
	n.mu.Unlock()
	for _, r := range runners {
		r.shutdown()
	}
	if n.cancel != nil {
		n.cancel()
	}
	done := make(chan struct{})
	go func() { n.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("node agent stop: %w", ctx.Err())
	case <-time.After(30 * time.Second):
		return errors.New("node agent stop: pods still running after 30s")
	}
}
