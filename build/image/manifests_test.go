package image

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	"sigs.k8s.io/yaml"

	"github.com/dnspulse/dnspulse/healer/api"
)

// These tests need no image: they check build/coredns's manifests against kubeadm's
// CoreDNS Deployment, the way `kubectl patch --type strategic` merges them.

const (
	patchFile       = "../coredns/deployment-patch.yaml"
	pdbFile         = "../coredns/pdb.yaml"
	leaseFile       = "../coredns/lease-rbac.yaml"
	gateFile        = "../coredns/gate-rbac.yaml"
	e2eGateFile     = "../../e2e/cluster/manifests/gate-rbac.yaml"
	kubeadmFile     = "testdata/kubeadm-coredns-deployment.yaml"
	kubeadmCorefile = "../../corefile-examples/kubeadm.Corefile"
)

func yamlFileJSON(t *testing.T, path string) []byte {
	t.Helper()
	y, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	j, err := yaml.YAMLToJSON(y)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return j
}

func patched(t *testing.T, original []byte) *appsv1.Deployment {
	t.Helper()
	out, err := strategicpatch.StrategicMergePatch(original, yamlFileJSON(t, patchFile), appsv1.Deployment{})
	if err != nil {
		t.Fatalf("applying %s: %v", patchFile, err)
	}
	var d appsv1.Deployment
	if err := yaml.UnmarshalStrict(out, &d); err != nil {
		t.Fatalf("patched Deployment: %v", err)
	}
	return &d
}

func TestDeploymentPatchOnKubeadm(t *testing.T) {
	original := yamlFileJSON(t, kubeadmFile)
	var before appsv1.Deployment
	if err := yaml.Unmarshal(original, &before); err != nil {
		t.Fatal(err)
	}
	d := patched(t, original)
	spec := d.Spec.Template.Spec

	if len(spec.Containers) != 1 || spec.Containers[0].Name != "coredns" {
		t.Fatalf("containers %v: the patch must merge into kubeadm's coredns container, not add one", spec.Containers)
	}
	c := spec.Containers[0]
	if c.Image == before.Spec.Template.Spec.Containers[0].Image || !regexp.MustCompile(`(^|/)dnspulse/coredns:`).MatchString(c.Image) {
		t.Errorf("image %q is not dnspulse's", c.Image)
	}

	// kubeadm's settings survive.
	kc := before.Spec.Template.Spec.Containers[0]
	if !slices.Equal(c.Args, kc.Args) {
		t.Errorf("args %v, kubeadm's were %v", c.Args, kc.Args)
	}
	if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet.Path != "/health" || c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet.Path != "/ready" {
		t.Error("kubeadm's probes were lost")
	}
	if len(c.VolumeMounts) != 1 || len(spec.Volumes) != 1 {
		t.Error("kubeadm's Corefile volume was lost")
	}
	if spec.PriorityClassName != "system-cluster-critical" || spec.ServiceAccountName != "coredns" {
		t.Error("kubeadm's pod settings were lost")
	}
	ports := map[string]corev1.ContainerPort{}
	for _, p := range c.Ports {
		ports[p.Name] = p
	}
	for _, name := range []string{"dns", "dns-tcp", "metrics", "liveness-probe", "readiness-probe"} {
		if _, ok := ports[name]; !ok {
			t.Errorf("kubeadm's port %s was lost: %v", name, c.Ports)
		}
	}
	if ports["dns"].Protocol != corev1.ProtocolUDP || ports["dns-tcp"].Protocol != corev1.ProtocolTCP {
		t.Error("port 53's UDP and TCP entries were merged into one")
	}

	// What the patch adds.
	pulse, ok := ports["pulse"]
	if !ok || pulse.ContainerPort != 9155 || pulse.Protocol != corev1.ProtocolTCP {
		t.Errorf("no TCP port 9155 named pulse: %v", c.Ports)
	}
	// The names the healer reads, from the healer's own constants.
	if got := d.Spec.Template.Annotations[api.AnnotationPulsePort]; got != "9155" {
		t.Errorf("annotation %s = %q, want the pulse port 9155", api.AnnotationPulsePort, got)
	}
	if !slices.Contains(spec.ReadinessGates, corev1.PodReadinessGate{ConditionType: api.ConditionServing}) {
		t.Errorf("no readiness gate dnspulse.io/serving: %v", spec.ReadinessGates)
	}
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil ||
		!slices.Equal(sc.Capabilities.Add, []corev1.Capability{"NET_BIND_SERVICE"}) ||
		!slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("capabilities are not drop ALL + add NET_BIND_SERVICE: %+v", sc)
	} else {
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Error("allowPrivilegeEscalation is not false")
		}
		if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser != 65532 {
			t.Error("not non-root 65532, the image's user")
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Error("root filesystem not read-only")
		}
	}

	// Lameduck: the grace period must outlast the Corefile's lameduck.
	lameduck := lameduckOf(t, kubeadmCorefile)
	if spec.TerminationGracePeriodSeconds == nil || time.Duration(*spec.TerminationGracePeriodSeconds)*time.Second <= lameduck {
		t.Errorf("terminationGracePeriodSeconds %v does not exceed the lameduck %v of %s", spec.TerminationGracePeriodSeconds, lameduck, kubeadmCorefile)
	}

	// Applying twice changes nothing (kubectl patch is re-run by people and scripts).
	once, _ := yaml.Marshal(d)
	again := patched(t, mustJSON(t, once))
	twice, _ := yaml.Marshal(again)
	if string(once) != string(twice) {
		t.Errorf("patch is not idempotent:\n%s\n---\n%s", once, twice)
	}
}

func mustJSON(t *testing.T, y []byte) []byte {
	t.Helper()
	j, err := yaml.YAMLToJSON(y)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func lameduckOf(t *testing.T, path string) time.Duration {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*lameduck\s+(\S+)`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("%s has no lameduck", path)
	}
	d, err := time.ParseDuration(string(m[1]))
	if err != nil {
		t.Fatalf("%s: lameduck %q: %v", path, m[1], err)
	}
	return d
}

func TestCoreDNSPDB(t *testing.T) {
	var pdb policyv1.PodDisruptionBudget
	if err := yaml.UnmarshalStrict(yamlFileJSON(t, pdbFile), &pdb); err != nil {
		t.Fatal(err)
	}
	var d appsv1.Deployment
	if err := yaml.Unmarshal(yamlFileJSON(t, kubeadmFile), &d); err != nil {
		t.Fatal(err)
	}
	if pdb.Namespace != d.Namespace {
		t.Errorf("PDB in %q, CoreDNS in %q", pdb.Namespace, d.Namespace)
	}
	sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
	if err != nil || sel.Empty() || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Errorf("PDB selector %v does not select the CoreDNS pods %v (%v)", pdb.Spec.Selector, d.Spec.Template.Labels, err)
	}
	if pdb.Spec.MinAvailable != nil {
		t.Error("minAvailable set: with it equal to the replicas no eviction is ever allowed; use maxUnavailable")
	}
	if pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() != 1 {
		t.Errorf("maxUnavailable %v, want 1: one disruption at a time", pdb.Spec.MaxUnavailable)
	}
}

// manifestDocs splits a multi-document YAML file into its documents, by kind.
func manifestDocs(t *testing.T, path string) map[string][][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][][]byte{}
	for _, doc := range regexp.MustCompile(`(?m)^---$`).Split(string(b), -1) {
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out[meta.Kind] = append(out[meta.Kind], []byte(doc))
	}
	return out
}

// roleAndBinding decodes the one Role and the one RoleBinding of a file and checks that the
// binding gives the Role to kube-system/coredns and nobody else.
func roleAndBinding(t *testing.T, path string) rbacv1.Role {
	t.Helper()
	docs := manifestDocs(t, path)
	if len(docs["Role"]) != 1 || len(docs["RoleBinding"]) != 1 || len(docs["ClusterRole"]) != 0 || len(docs["ClusterRoleBinding"]) != 0 {
		t.Fatalf("%s: want one Role and one RoleBinding, no cluster-wide grant", path)
	}
	var role rbacv1.Role
	var rb rbacv1.RoleBinding
	if err := yaml.UnmarshalStrict(docs["Role"][0], &role); err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(docs["RoleBinding"][0], &rb); err != nil {
		t.Fatal(err)
	}
	if rb.RoleRef.Kind != "Role" || rb.RoleRef.Name != role.Name || rb.Namespace != role.Namespace ||
		len(rb.Subjects) != 1 || rb.Subjects[0].Name != "coredns" || rb.Subjects[0].Namespace != "kube-system" {
		t.Errorf("%s: RoleBinding %+v does not bind the Role to kube-system/coredns alone", path, rb)
	}
	return role
}

// policyAndBinding decodes the one ValidatingAdmissionPolicy and its binding of a file.
func policyAndBinding(t *testing.T, path string) admissionv1.ValidatingAdmissionPolicy {
	t.Helper()
	docs := manifestDocs(t, path)
	if len(docs["ValidatingAdmissionPolicy"]) != 1 || len(docs["ValidatingAdmissionPolicyBinding"]) != 1 {
		t.Fatalf("%s: want one ValidatingAdmissionPolicy and its binding", path)
	}
	var vap admissionv1.ValidatingAdmissionPolicy
	var binding admissionv1.ValidatingAdmissionPolicyBinding
	if err := yaml.UnmarshalStrict(docs["ValidatingAdmissionPolicy"][0], &vap); err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(docs["ValidatingAdmissionPolicyBinding"][0], &binding); err != nil {
		t.Fatal(err)
	}
	if binding.Spec.PolicyName != vap.Name || !slices.Equal(binding.Spec.ValidationActions, []admissionv1.ValidationAction{admissionv1.Deny}) {
		t.Errorf("%s: binding %+v does not deny with %s", path, binding.Spec, vap.Name)
	}
	if vap.Spec.FailurePolicy == nil || *vap.Spec.FailurePolicy != admissionv1.Fail {
		t.Errorf("%s: failurePolicy is not Fail: a policy that cannot be evaluated must deny", path)
	}
	if len(vap.Spec.MatchConditions) != 1 || vap.Spec.MatchConditions[0].Expression != "request.userInfo.username == 'system:serviceaccount:kube-system:coredns'" {
		t.Errorf("%s: the policy must apply to the coredns ServiceAccount's requests: %+v", path, vap.Spec.MatchConditions)
	}
	return vap
}

// The heartbeat Leases live in a namespace of their own: CoreDNS may write Leases there and
// nowhere else, each replica its own (proven against a real apiserver by e2e/heal TestCoreDNSPrivileges).
func TestCoreDNSLeaseRBAC(t *testing.T) {
	docs := manifestDocs(t, leaseFile)
	var ns corev1.Namespace
	if len(docs["Namespace"]) != 1 || yaml.UnmarshalStrict(docs["Namespace"][0], &ns) != nil || ns.Name != "dnspulse-heartbeat" {
		t.Fatalf("%s: want the Namespace dnspulse-heartbeat", leaseFile)
	}
	role := roleAndBinding(t, leaseFile)
	if role.Namespace != ns.Name {
		t.Errorf("lease Role in %q: Leases elsewhere (kube-system's leader Leases) must stay out of reach", role.Namespace)
	}
	if len(role.Rules) != 1 || !slices.Equal(role.Rules[0].APIGroups, []string{"coordination.k8s.io"}) ||
		!slices.Equal(role.Rules[0].Resources, []string{"leases"}) ||
		!slices.Equal(role.Rules[0].Verbs, []string{"get", "create", "update", "delete"}) {
		t.Errorf("lease Role grants %+v, want only leases get/create/update/delete", role.Rules)
	}
	vap := policyAndBinding(t, leaseFile)
	if r := vap.Spec.MatchConstraints.ResourceRules; len(r) != 1 || !slices.Equal(r[0].Resources, []string{"leases"}) {
		t.Errorf("lease policy matches %+v", r)
	}
}

// pulse's readiness_gate: patch on pods/status in kube-system, narrowed by the policy to its
// own pod and its one condition.
func TestCoreDNSGateRBAC(t *testing.T) {
	role := roleAndBinding(t, gateFile)
	if role.Namespace != "kube-system" || len(role.Rules) != 1 || !slices.Equal(role.Rules[0].APIGroups, []string{""}) ||
		!slices.Equal(role.Rules[0].Resources, []string{"pods/status"}) || !slices.Equal(role.Rules[0].Verbs, []string{"patch"}) {
		t.Errorf("gate Role %s grants %+v, want only pods/status patch in kube-system", role.Namespace, role.Rules)
	}
	vap := policyAndBinding(t, gateFile)
	if r := vap.Spec.MatchConstraints.ResourceRules; len(r) != 1 || !slices.Equal(r[0].Resources, []string{"pods/status"}) ||
		!slices.Equal(r[0].Operations, []admissionv1.OperationType{admissionv1.Update}) {
		t.Errorf("gate policy matches %+v", r)
	}
	text := ""
	for _, v := range vap.Spec.Validations {
		text += v.Expression + "\n"
	}
	for _, want := range []string{"authentication.kubernetes.io/pod-name", "oldObject.status.conditions", "object.status.?containerStatuses", "object.metadata.?labels", "'" + api.ConditionServing + "'"} {
		if !strings.Contains(text+vap.Spec.Variables[0].Expression+vap.Spec.Variables[1].Expression+vap.Spec.Variables[3].Expression, want) {
			t.Errorf("gate policy does not check %s", want)
		}
	}
	// The e2e cluster applies a copy: the same bytes, so that e2e proves what ships.
	shipped, err := os.ReadFile(gateFile)
	if err != nil {
		t.Fatal(err)
	}
	copied, err := os.ReadFile(e2eGateFile)
	if err != nil {
		t.Fatal(err)
	}
	if string(shipped) != string(copied) {
		t.Errorf("%s differs from %s: copy it (cp %s %s)", e2eGateFile, gateFile, gateFile, e2eGateFile)
	}
}
