package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// VolumeDir is where the node agent materialised volume vol of the pod: the folder bind-mounted at
// each of its mountPaths. Writing a file here changes that one pod's view (e.g. its Corefile, which
// CoreDNS's reload plugin then picks up) without touching the ConfigMap the other replicas read.
func (r *podRunner) volumeDir(vol string) string { return filepath.Join(r.dir, "volumes", vol) }

// writeVolumes materialises configMap, secret, emptyDir, downwardAPI and projected volumes (the
// latter is how the ServiceAccount admission plugin injects kube-api-access-*: a bound token from
// the TokenRequest API, the cluster CA from kube-root-ca.crt, the namespace).
func (r *podRunner) writeVolumes(ctx context.Context, pod *corev1.Pod) error {
	for _, v := range pod.Spec.Volumes {
		dir := r.volumeDir(v.Name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		var err error
		switch {
		case v.ConfigMap != nil:
			err = r.writeConfigMap(ctx, dir, v.ConfigMap.Name, v.ConfigMap.Items, v.ConfigMap.Optional)
			if err == nil {
				r.cmSeen[v.Name] = r.lastCMVersion
			}
		case v.Secret != nil:
			err = r.writeSecret(ctx, dir, v.Secret.SecretName, v.Secret.Items, v.Secret.Optional)
		case v.EmptyDir != nil:
		case v.DownwardAPI != nil:
			err = r.writeDownward(dir, pod, v.DownwardAPI.Items)
		case v.Projected != nil:
			for _, src := range v.Projected.Sources {
				switch {
				case src.ServiceAccountToken != nil:
					err = r.writeToken(ctx, dir, pod, src.ServiceAccountToken)
				case src.ConfigMap != nil:
					err = r.writeConfigMap(ctx, dir, src.ConfigMap.Name, src.ConfigMap.Items, src.ConfigMap.Optional)
				case src.Secret != nil:
					err = r.writeSecret(ctx, dir, src.Secret.Name, src.Secret.Items, src.Secret.Optional)
				case src.DownwardAPI != nil:
					err = r.writeDownward(dir, pod, src.DownwardAPI.Items)
				default:
					err = fmt.Errorf("unsupported projected source")
				}
				if err != nil {
					break
				}
			}
		case v.HostPath != nil:
		default:
			err = fmt.Errorf("unsupported volume type")
		}
		if err != nil {
			return fmt.Errorf("volume %q: %w", v.Name, err)
		}
	}
	return nil
}

func writeAtomic(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func writeItems(dir string, data map[string][]byte, items []corev1.KeyToPath) error {
	if len(items) == 0 {
		for k, v := range data {
			if err := writeAtomic(filepath.Join(dir, k), v, 0o644); err != nil {
				return err
			}
		}
		return nil
	}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			return fmt.Errorf("key %q not found", it.Key)
		}
		if err := writeAtomic(filepath.Join(dir, it.Path), v, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func (r *podRunner) writeConfigMap(ctx context.Context, dir, name string, items []corev1.KeyToPath, optional *bool) error {
	cm, err := r.n.c.Client.CoreV1().ConfigMaps(r.ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		if optional != nil && *optional {
			return nil
		}
		return fmt.Errorf("configMap %s: %w", name, err)
	}
	r.lastCMVersion = cm.ResourceVersion
	data := map[string][]byte{}
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		data[k] = v
	}
	return writeItems(dir, data, items)
}

func (r *podRunner) writeSecret(ctx context.Context, dir, name string, items []corev1.KeyToPath, optional *bool) error {
	s, err := r.n.c.Client.CoreV1().Secrets(r.ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		if optional != nil && *optional {
			return nil
		}
		return fmt.Errorf("secret %s: %w", name, err)
	}
	return writeItems(dir, s.Data, items)
}

func (r *podRunner) writeDownward(dir string, pod *corev1.Pod, items []corev1.DownwardAPIVolumeFile) error {
	for _, it := range items {
		if it.FieldRef == nil {
			continue
		}
		v, err := r.fieldValue(pod, it.FieldRef.FieldPath)
		if err != nil {
			return err
		}
		if err := writeAtomic(filepath.Join(dir, it.Path), []byte(v), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func (r *podRunner) writeToken(ctx context.Context, dir string, pod *corev1.Pod, src *corev1.ServiceAccountTokenProjection) error {
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		ExpirationSeconds: src.ExpirationSeconds,
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}
	if src.Audience != "" {
		req.Spec.Audiences = []string{src.Audience}
	}
	if req.Spec.ExpirationSeconds == nil {
		req.Spec.ExpirationSeconds = ptr.To[int64](3607)
	}
	// The apiserver extends admission-injected tokens (3607s) to a year
	// (--service-account-extend-token-expiration), so no refresh is needed for a test's lifetime.
	tok, err := r.n.c.Client.CoreV1().ServiceAccounts(r.ns).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("token for ServiceAccount %s: %w", sa, err)
	}
	return writeAtomic(filepath.Join(dir, src.Path), []byte(tok.Status.Token), 0o600)
}

// mountScript is the shell prologue that runs inside the container's fresh mount namespace (the one
// `ip netns exec` creates, a slave of the host's, so nothing propagates back): it gives the pod its
// own /etc/resolv.conf and /etc/hosts and bind-mounts each volume at its mountPath. A mountPath
// whose parent folder does not exist on the host (/etc/coredns, /var/run/secrets/...) is made
// inside an overlay of its nearest existing ancestor, so the host file system is never touched.
func (r *podRunner) mountScript(pod *corev1.Pod, ctr *corev1.Container) (string, error) {
	// Overlays first: an overlay mounted later would hide bind mounts made below it.
	var overlayLines, lines []string
	q := shellQuote
	overlays := map[string]bool{}
	ensure := func(target string, isDir bool) error {
		if _, err := os.Stat(target); err == nil {
			return nil
		}
		anc := filepath.Dir(target)
		for {
			if fi, err := os.Stat(anc); err == nil && fi.IsDir() {
				break
			}
			anc = filepath.Dir(anc)
		}
		real, err := filepath.EvalSymlinks(anc)
		if err != nil {
			return err
		}
		if !overlays[real] && real != "/" {
			overlays[real] = true
			id := fmt.Sprintf("ov%d", len(overlays))
			upper, work := filepath.Join(r.dir, id, "upper"), filepath.Join(r.dir, id, "work")
			if err := os.MkdirAll(upper, 0o755); err != nil {
				return err
			}
			if err := os.MkdirAll(work, 0o755); err != nil {
				return err
			}
			overlayLines = append(overlayLines, fmt.Sprintf("mount -t overlay overlay -o lowerdir=%s,upperdir=%s,workdir=%s %s", q(real), q(upper), q(work), q(real)))
		} else if real == "/" {
			return fmt.Errorf("mountPath %s: no existing parent folder below / to overlay", target)
		}
		if isDir {
			lines = append(lines, "mkdir -p "+q(target))
		} else {
			lines = append(lines, "mkdir -p "+q(filepath.Dir(target)), "touch "+q(target))
		}
		return nil
	}
	for _, f := range []string{"resolv.conf", "hosts"} {
		lines = append(lines, fmt.Sprintf("mount --bind %s %s", q(filepath.Join(r.dir, f)), q("/etc/"+f)))
	}
	lines = append(lines, "hostname "+q(pod.Name))
	vols := map[string]corev1.Volume{}
	for _, v := range pod.Spec.Volumes {
		vols[v.Name] = v
	}
	mounts := append([]corev1.VolumeMount(nil), ctr.VolumeMounts...)
	sort.SliceStable(mounts, func(i, j int) bool { return len(mounts[i].MountPath) < len(mounts[j].MountPath) })
	for _, m := range mounts {
		v, ok := vols[m.Name]
		if !ok {
			return "", fmt.Errorf("container %s volumeMount %q: no such volume", ctr.Name, m.Name)
		}
		src := r.volumeDir(m.Name)
		if v.HostPath != nil {
			src = v.HostPath.Path
		}
		if m.SubPath != "" {
			src = filepath.Join(src, m.SubPath)
		}
		fi, err := os.Stat(src)
		if err != nil {
			return "", fmt.Errorf("container %s volumeMount %q: %w", ctr.Name, m.Name, err)
		}
		if err := ensure(m.MountPath, fi.IsDir()); err != nil {
			return "", err
		}
		lines = append(lines, fmt.Sprintf("mount --bind %s %s", q(src), q(m.MountPath)))
		if m.ReadOnly {
			lines = append(lines, fmt.Sprintf("mount -o remount,bind,ro %s", q(m.MountPath)))
		}
	}
	return "set -e\n" + strings.Join(append(overlayLines, lines...), "\n") + "\nexec \"$@\"\n", nil
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func mkdirAll(dir string) error { return os.MkdirAll(dir, 0o755) }

// syncConfigMaps rewrites a ConfigMap volume when its ConfigMap changed, as the kubelet does
// (CoreDNS's reload plugin then applies a new Corefile). A file edited through VolumeDir stays as
// edited until the ConfigMap itself changes.
func (r *podRunner) syncConfigMaps(ctx context.Context, pod *corev1.Pod) {
	for _, v := range pod.Spec.Volumes {
		if v.ConfigMap == nil {
			continue
		}
		cm, err := r.n.c.Client.CoreV1().ConfigMaps(r.ns).Get(ctx, v.ConfigMap.Name, metav1.GetOptions{})
		if err != nil || cm.ResourceVersion == r.cmSeen[v.Name] {
			continue
		}
		if err := r.writeConfigMap(ctx, r.volumeDir(v.Name), v.ConfigMap.Name, v.ConfigMap.Items, v.ConfigMap.Optional); err != nil {
			r.logf("volume %s: %v", v.Name, err)
			continue
		}
		r.cmSeen[v.Name] = r.lastCMVersion
	}
}
