package kube

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/events"

	"github.com/dnspulse/dnspulse/healer/internal/config"
)

// restHarness serves one pod and answers its eviction with a fixed error, over real HTTP,
// so the real client's retry behaviour is what is tested.
func restHarness(t *testing.T, cfg config.Kubernetes, evictStatus *apierrors.StatusError, retryAfter string) (*Mode, *atomic.Int32, *atomic.Int32) {
	t.Helper()
	var evictions, deletes atomic.Int32
	p := pod("a", "10.0.0.1", &rsOwner)
	p.APIVersion, p.Kind = "v1", "Pod"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/api/v1/namespaces/kube-system/pods/a":
			_ = json.NewEncoder(w).Encode(p)
		case r.Method == http.MethodPost && r.URL.Path == "/api/v1/namespaces/kube-system/pods/a/eviction":
			evictions.Add(1)
			if retryAfter != "" {
				w.Header().Set("Retry-After", retryAfter)
			}
			st := evictStatus.Status()
			st.APIVersion, st.Kind = "v1", "Status"
			w.WriteHeader(int(st.Code))
			_ = json.NewEncoder(w).Encode(st)
		case r.Method == http.MethodDelete:
			deletes.Add(1)
			w.WriteHeader(http.StatusOK)
			_, _ = io.WriteString(w, `{"kind":"Status","apiVersion":"v1","status":"Success"}`)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	client, err := kubernetes.NewForConfig(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewWithClient(context.Background(), cfg, testOptions(), client, events.NewFakeRecorder(10))
	if err != nil {
		t.Fatal(err)
	}
	return m, &evictions, &deletes
}

// client-go's typed Evict would wait out Retry-After and try again up to 10 times; the
// remediator must see the PDB's 429 soon: a 429 with Retry-After (the server's "not now")
// is asked again evictAttempts times evictRetryGap apart, never waiting out Retry-After.
func TestEvictOverHTTPDoesNotWaitOutRetryAfter(t *testing.T) {
	cfg := baseConfig()
	cfg.AllowDelete = true
	m, evictions, deletes := restHarness(t, cfg, apierrors.NewTooManyRequests("Cannot evict pod as it would violate the pod's disruption budget.", 1), "1")
	start := time.Now()
	out := m.Remediator().Remediate(context.Background(), target("a", "10.0.0.1"), nil, false)
	if out.Result != "blocked" || out.RetryAfter != time.Second {
		t.Fatalf("outcome %+v, want blocked with RetryAfter 1s from the server", out)
	}
	if n := evictions.Load(); n != evictAttempts {
		t.Fatalf("%d eviction requests, want exactly %d (our quick retries, none of client-go's)", n, evictAttempts)
	}
	if n := deletes.Load(); n != 0 {
		t.Fatalf("%d deletes after a 429", n)
	}
	if el := time.Since(start); el > time.Duration(evictAttempts)*time.Second {
		t.Logf("remediation took %v: did something wait out Retry-After?", el)
	}
}

func TestEvictOverHTTP405FallsBackToDeleteOnlyWhenAllowed(t *testing.T) {
	unsupported := apierrors.NewMethodNotSupported(corev1.Resource("pods/eviction"), "create")
	m, _, deletes := restHarness(t, baseConfig(), unsupported, "")
	out := m.Remediator().Remediate(context.Background(), target("a", "10.0.0.1"), nil, false)
	if out.Result != "refused" || deletes.Load() != 0 {
		t.Fatalf("without --allow-delete: outcome %+v, %d deletes", out, deletes.Load())
	}
	cfg := baseConfig()
	cfg.AllowDelete = true
	m, _, deletes = restHarness(t, cfg, unsupported, "")
	out = m.Remediator().Remediate(context.Background(), target("a", "10.0.0.1"), nil, false)
	if out.Action != "delete" || out.Result != "success" || deletes.Load() != 1 || !strings.Contains(out.Message, "--allow-delete") {
		t.Fatalf("with --allow-delete: outcome %+v, %d deletes", out, deletes.Load())
	}
}
