package cluster

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"fmt"
	"io"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"k8s.io/utils/ptr"
)

//go:embed manifests/*.yaml
var manifests embed.FS

// ApplyManifest applies an embedded manifest (manifests/NAME) with server-side apply.
func (c *Cluster) ApplyManifest(ctx context.Context, name string) error {
	b, err := manifests.ReadFile("manifests/" + name)
	if err != nil {
		return err
	}
	return c.Apply(ctx, b)
}

// Apply server-side-applies every object of a multi-document YAML, as `kubectl apply
// --server-side` would, with field manager dnspulse-e2e.
func (c *Cluster) Apply(ctx context.Context, yamlDocs []byte) error {
	dyn, err := dynamic.NewForConfig(c.Config)
	if err != nil {
		return err
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(c.Client.Discovery()))
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(yamlDocs), 4096)
	for i := 1; ; i++ {
		var obj unstructured.Unstructured
		if err := dec.Decode(&obj.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("document %d: %w", i, err)
		}
		if len(obj.Object) == 0 {
			continue
		}
		gvk := obj.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			return fmt.Errorf("document %d (%s %s): %w", i, gvk.Kind, obj.GetName(), err)
		}
		data, err := obj.MarshalJSON()
		if err != nil {
			return err
		}
		ri := dyn.Resource(m.Resource)
		var target dynamic.ResourceInterface = ri
		if ns := obj.GetNamespace(); ns != "" {
			target = ri.Namespace(ns)
		}
		if _, err := target.Patch(ctx, obj.GetName(), types.ApplyPatchType, data, metav1.PatchOptions{FieldManager: "dnspulse-e2e", Force: ptr.To(true)}); err != nil {
			return fmt.Errorf("apply %s %s: %w", gvk.Kind, obj.GetName(), err)
		}
	}
}

// WaitDeploymentReady waits until the Deployment's observed generation is current and all its
// replicas are updated and ready.
func (c *Cluster) WaitDeploymentReady(ctx context.Context, ns, name string) error {
	var last *appsv1.Deployment
	err := poll(ctx, 3*time.Minute, fmt.Sprintf("Deployment %s/%s ready", ns, name), func() (bool, error) {
		d, err := c.Client.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		last = d
		want := ptr.Deref(d.Spec.Replicas, 1)
		return d.Status.ObservedGeneration >= d.Generation && d.Status.UpdatedReplicas == want &&
			d.Status.ReadyReplicas == want && d.Status.Replicas == want, nil
	})
	if err != nil && last != nil {
		return fmt.Errorf("%w (status: replicas %d, updated %d, ready %d; logs in %s)", err, last.Status.Replicas, last.Status.UpdatedReplicas, last.Status.ReadyReplicas, c.LogDir)
	}
	return err
}
