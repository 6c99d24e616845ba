package main

import (
	"strings"
	"testing"

	"github.com/tether-k8s/tether/core/authn"
	"github.com/tether-k8s/tether/core/relayapi"
)

func TestCheckLogin(t *testing.T) {
	ac, err := authn.LoadConfig([]byte(`apiVersion: apiserver.config.k8s.io/v1
kind: AuthenticationConfiguration
jwt:
- issuer:
    url: https://op.example.com
    audiences: [tether]
  claimMappings:
    username: {claim: sub, prefix: "op:"}
`))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		login   relayapi.LoginSettings
		wantErr string
	}{
		{name: "none", login: relayapi.LoginSettings{}},
		{name: "trusted issuer and audience", login: relayapi.LoginSettings{Issuer: "https://op.example.com", ClientID: "tether"}},
		{name: "issuer not trusted", login: relayapi.LoginSettings{Issuer: "https://other.example.com", ClientID: "tether"}, wantErr: "not an issuer of --authentication-config"},
		{name: "client not an audience", login: relayapi.LoginSettings{Issuer: "https://op.example.com", ClientID: "kubectl"}, wantErr: "not among the audiences"},
		{name: "issuer alone", login: relayapi.LoginSettings{Issuer: "https://op.example.com"}, wantErr: "go together"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := checkLogin(tc.login, ac)
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("checkLogin: %v, want %q", err, tc.wantErr)
			}
		})
	}
}
