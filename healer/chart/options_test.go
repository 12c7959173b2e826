package chart

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"

	"github.com/dnspulse/dnspulse/healer/internal/config"
)

// TestArgsAcceptedByHealer hands the rendered args (and the rendered --config file) to the
// healer's own option parsing: pflag, Complete, Validate. What the chart renders, the healer
// accepts.
func TestArgsAcceptedByHealer(t *testing.T) {
	for _, file := range ciFiles(t) {
		t.Run(filepath.Base(file), func(t *testing.T) {
			r := mustRender(t, loadValuesFile(t, file))
			args := r.deployment(t).Spec.Template.Spec.Containers[0].Args
			for i, a := range args {
				if !strings.HasPrefix(a, "--config=") {
					continue
				}
				var cm corev1.ConfigMap
				r.get(t, "ConfigMap", releaseName+"-dnspulse-healer-config", &cm)
				path := filepath.Join(t.TempDir(), "config.yaml")
				if err := os.WriteFile(path, []byte(cm.Data["config.yaml"]), 0o644); err != nil {
					t.Fatal(err)
				}
				args[i] = "--config=" + path
			}
			var usage strings.Builder
			o, _, err := config.Parse(args, &usage)
			if err != nil {
				t.Fatalf("healer refuses %q: %v\n%s", args, err, usage.String())
			}
			if err := o.Validate(); err != nil {
				t.Fatalf("healer Validate: %v", err)
			}
		})
	}
}

// TestDefaultsAreTheHealers: with the chart's defaults the healer runs with its own
// defaults, except where a pod needs otherwise (said here, with why).
func TestDefaultsAreTheHealers(t *testing.T) {
	args := mustRender(t, nil).deployment(t).Spec.Template.Spec.Containers[0].Args
	fs := pflag.NewFlagSet("healer", pflag.ContinueOnError)
	config.Default().AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	differ := map[string]string{
		// The healer's default is "" = $POD_NAMESPACE: the chart writes the same, explicitly.
		"canary-namespace":       releaseNamespace,
		"leader-elect-namespace": releaseNamespace,
		// The patch declares the readiness gate; someone must open it (values.yaml says why).
		"readiness-gate": "true",
	}
	fs.VisitAll(func(f *pflag.Flag) {
		if !f.Changed {
			return
		}
		if want, ok := differ[f.Name]; ok {
			if f.Value.String() != want {
				t.Errorf("--%s = %s, want %s", f.Name, f.Value, want)
			}
			return
		}
		if f.Value.String() != f.DefValue {
			t.Errorf("chart default --%s=%s differs from the healer's default %s", f.Name, f.Value, f.DefValue)
		}
	})
}
