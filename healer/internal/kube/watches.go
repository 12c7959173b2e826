package kube

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	coordinationlisters "k8s.io/client-go/listers/coordination/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
)

// watches are the healer's two watches, filtered server-side: the CoreDNS pods (by
// namespace and label selector) and the DNS Service's EndpointSlices. Mode makes them
// once and hands their listers to the parts that read them.
type watches struct {
	namespace, service       string
	selector                 labels.Selector
	podFactory, sliceFactory informers.SharedInformerFactory
	podInformer, sliceInf    cache.SharedIndexInformer
	pods                     *podLister
	slices                   discoverylisters.EndpointSliceNamespaceLister
	// The pulse Leases, when their namespace is given: the replicas' own word through the
	// apiserver.
	leaseFactory  informers.SharedInformerFactory
	leaseInformer cache.SharedIndexInformer
	leases        coordinationlisters.LeaseNamespaceLister
	leaseNS       string
}

// synced lists the informers' HasSynced.
func (w *watches) synced() []cache.InformerSynced {
	s := []cache.InformerSynced{w.podInformer.HasSynced, w.sliceInf.HasSynced}
	if w.leaseInformer != nil {
		s = append(s, w.leaseInformer.HasSynced)
	}
	return s
}

// start starts every informer.
func (w *watches) start(stop <-chan struct{}) {
	w.podFactory.Start(stop)
	w.sliceFactory.Start(stop)
	if w.leaseFactory != nil {
		w.leaseFactory.Start(stop)
	}
}

// watchLeases adds the informer of the pulse Leases in namespace ns.
func (w *watches) watchLeases(client kubernetes.Interface, ns string) {
	w.leaseNS = ns
	w.leaseFactory = informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(ns))
	w.leaseInformer = w.leaseFactory.Coordination().V1().Leases().Informer()
	w.leases = w.leaseFactory.Coordination().V1().Leases().Lister().Leases(ns)
}

func newWatches(client kubernetes.Interface, namespace, selector, service string) (*watches, error) {
	sel, err := labels.Parse(selector)
	if err != nil {
		return nil, fmt.Errorf("--selector %q: %w", selector, err)
	}
	inf := &watches{namespace: namespace, service: service, selector: sel}
	inf.podFactory = informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithNamespace(namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = sel.String() }))
	inf.podInformer = inf.podFactory.Core().V1().Pods().Informer()
	inf.pods = &podLister{l: inf.podFactory.Core().V1().Pods().Lister().Pods(namespace), selector: sel}

	// Only the DNS Service's slices: their dns/UDP port is the port the pods serve on.
	sliceSel := labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: service})
	inf.sliceFactory = informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithNamespace(namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = sliceSel.String() }))
	inf.sliceInf = inf.sliceFactory.Discovery().V1().EndpointSlices().Informer()
	inf.slices = inf.sliceFactory.Discovery().V1().EndpointSlices().Lister().EndpointSlices(namespace)
	return inf, nil
}

// podLister reads the cached CoreDNS pods.
type podLister struct {
	l        corelisters.PodNamespaceLister
	selector labels.Selector
}

// get returns the cached pod by name (nil when the informer does not have it).
func (l *podLister) get(name string) *corev1.Pod {
	p, err := l.l.Get(name)
	if err != nil {
		return nil
	}
	return p
}

// list returns the cached pods that match the selector.
func (l *podLister) list() ([]*corev1.Pod, error) { return l.l.List(l.selector) }

// ownedBy returns the UIDs of the cached pods controlled by owner.
func (l *podLister) ownedBy(owner types.UID) map[types.UID]bool {
	out := map[types.UID]bool{}
	pods, err := l.list()
	if err != nil {
		return out
	}
	for _, p := range pods {
		if ref := metav1.GetControllerOf(p); ref != nil && ref.UID == owner {
			out[p.UID] = true
		}
	}
	return out
}
