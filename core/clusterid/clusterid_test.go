package clusterid_test

import (
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/tether-k8s/tether/core/clusterid"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		id string
		ok bool
	}{
		{"a", true},
		{"prod", true},
		{"prod-eu-1", true},
		{"0cluster", true},
		{strings.Repeat("a", 63), true},
		{"", false},
		{strings.Repeat("a", 64), false},
		{"../x", false},
		{"..", false},
		{"%2e%2e", false},
		{"a%2Fb", false},
		{"a/b", false},
		{"prod.", false},
		{"prod.example", false},
		{"Prod", false},
		{"PROD", false},
		{"prоd", false}, // Cyrillic о
		{"ｐrod", false}, // fullwidth p
		{"-prod", false},
		{"prod-", false},
		{"pr_od", false},
		{"pr od", false},
		{"prod\n", false},
		{"prod\x00", false},
		{"prod\r\nX-Injected: 1", false},
	}
	for _, tc := range tests {
		t.Run(tc.id, func(t *testing.T) {
			err := clusterid.Validate(tc.id)
			if tc.ok && err != nil {
				t.Fatalf("Validate(%q) = %v, want nil", tc.id, err)
			}
			if !tc.ok && !errors.Is(err, clusterid.ErrInvalid) {
				t.Fatalf("Validate(%q) = %v, want ErrInvalid", tc.id, err)
			}
		})
	}
}

// FuzzValidate checks that every ID the validator accepts is safe
// as it is in a URL path, a header, a certificate URI and a log line: escaping
// or normalising it changes nothing.
func FuzzValidate(f *testing.F) {
	for _, s := range []string{"prod", "../x", "%2e%2e", "prod.", "Prod", "prоd", "a-b", "-", "a\r\nb"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		if clusterid.Validate(id) != nil {
			return
		}
		if url.PathEscape(id) != id || url.QueryEscape(id) != id || strings.ToLower(id) != id {
			t.Fatalf("accepted %q, which escaping or case-folding changes", id)
		}
		if strings.ContainsAny(id, "./%\\:\r\n\x00 ") || len(id) > clusterid.MaxLen {
			t.Fatalf("accepted %q", id)
		}
		u, err := url.Parse("tether://cluster/" + id)
		if err != nil || u.Path != "/"+id || u.String() != "tether://cluster/"+id {
			t.Fatalf("accepted %q, which does not round-trip through a URI: %v", id, err)
		}
	})
}
