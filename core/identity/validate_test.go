package identity_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/tether-k8s/tether/core/identity"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		name        string
		id          identity.Identity
		allowSystem bool
		wantErr     string // "" means accepted
	}{
		{name: "plain", id: identity.Identity{User: "oidc:alice", Groups: []string{"oidc:dev"}, Extra: map[string][]string{"example.com/repo": {"org/app"}}}},
		{name: "no user", id: identity.Identity{}, wantErr: "no user name"},
		{name: "CR LF in user", id: identity.Identity{User: "alice\r\nImpersonate-Group: system:masters"}, wantErr: "control character"},
		{name: "NUL in user", id: identity.Identity{User: "alice\x00"}, wantErr: "control character"},
		{name: "DEL in uid", id: identity.Identity{User: "alice", UID: "1\x7f"}, wantErr: "UID"},
		{name: "system user", id: identity.Identity{User: "system:admin"}, wantErr: "reserved"},
		{name: "system user allowed", id: identity.Identity{User: "system:admin"}, allowSystem: true},
		{name: "system:masters group", id: identity.Identity{User: "alice", Groups: []string{"system:masters"}}, wantErr: "reserved"},
		{name: "empty group", id: identity.Identity{User: "alice", Groups: []string{""}}, wantErr: "group name is empty"},
		{name: "LF in group", id: identity.Identity{User: "alice", Groups: []string{"a\nb"}}, wantErr: "group name"},
		{name: "upper-case extra key", id: identity.Identity{User: "alice", Extra: map[string][]string{"Repo": {"x"}}}, wantErr: "lower case"},
		{name: "empty extra key", id: identity.Identity{User: "alice", Extra: map[string][]string{"": {"x"}}}, wantErr: "extra key"},
		{name: "CR in extra value", id: identity.Identity{User: "alice", Extra: map[string][]string{"k": {"x\r"}}}, wantErr: "value of extra"},
		{name: "non-ASCII is fine", id: identity.Identity{User: "oidc:zoë", Groups: []string{"oidc:équipe"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := identity.Validate(tc.id, tc.allowSystem)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("Validate: %v, want accepted", err)
			case tc.wantErr != "" && err == nil:
				t.Fatalf("Validate accepted it, want an error with %q", tc.wantErr)
			case tc.wantErr != "" && (!strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, identity.ErrUnsafe)):
				t.Fatalf("Validate: %v, want ErrUnsafe with %q", err, tc.wantErr)
			}
		})
	}
}
