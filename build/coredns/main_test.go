package main

import (
	"slices"
	"testing"
)

func TestSpliceBefore(t *testing.T) {
	in := []string{"cache", "prometheus", "errors"}
	got, err := spliceBefore(in, "pulse", "prometheus")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"cache", "pulse", "prometheus", "errors"}; !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if !slices.Equal(in, []string{"cache", "prometheus", "errors"}) {
		t.Fatalf("input was modified: %v", in)
	}
	if _, err := spliceBefore(got, "pulse", "prometheus"); err == nil {
		t.Fatal("splicing twice: no error")
	}
	if _, err := spliceBefore(in, "pulse", "nope"); err == nil {
		t.Fatal("missing anchor: no error")
	}
}
