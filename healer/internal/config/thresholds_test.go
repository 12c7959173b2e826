package config

import "testing"

func TestThresholdsValidate(t *testing.T) {
	if errs := DefaultThresholds().validate("thresholds."); len(errs) != 0 {
		t.Fatalf("defaults invalid: %v", errs)
	}
	th := DefaultThresholds()
	th.MinFailures, th.LatencyFactor, th.ErrorMargin = 0, 0.5, 2
	errs := th.validate("x.yaml: thresholds.")
	if len(errs) != 3 {
		t.Fatalf("want 3 errors, got %v", errs)
	}
	for _, e := range errs {
		if len(e) < len("x.yaml: thresholds.") || e[:len("x.yaml: thresholds.")] != "x.yaml: thresholds." {
			t.Errorf("error %q does not name the key", e)
		}
	}
}
