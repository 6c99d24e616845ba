package charts

import (
	"fmt"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"sigs.k8s.io/yaml"
)

// TestWrongValuesAreRefused installs (renders) each chart with one wrong
// value at a time over valid ones: the install must fail, and the message
// must name the value (its path, and what is wrong with it).
func TestWrongValuesAreRefused(t *testing.T) {
	const schemaErr = "values don't meet the specifications of the schema"
	tests := []struct {
		name   string
		chart  string
		values string
		// bare: only these values, not over the required ones.
		bare bool
		want []string
	}{
		{name: "agent: nothing given", chart: agentChart, bare: true,
			want: []string{schemaErr, "missing properties 'cluster', 'authenticationConfig'", "at '/relay': missing properties 'url', 'caPEM'"}},
		{name: "agent: cluster not a DNS label", chart: agentChart, values: "cluster: Prod_1",
			want: []string{schemaErr, "at '/cluster'", "'Prod_1' does not match pattern"}},
		{name: "agent: cluster too long", chart: agentChart, values: "cluster: " + strings.Repeat("a", 64),
			want: []string{"at '/cluster'"}},
		{name: "agent: relay URL not https", chart: agentChart, values: "relay: {url: 'http://x'}",
			want: []string{schemaErr, "at '/relay/url'", "'http://x' does not match pattern '^https://"}},
		{name: "agent: relay URL with a path", chart: agentChart, values: "relay: {url: 'https://relay.example.com/tether/'}",
			want: []string{"at '/relay/url'"}},
		{name: "agent: relay CA not PEM", chart: agentChart, values: "relay: {caPEM: relay-ca.pem}",
			want: []string{"at '/relay/caPEM'", "BEGIN CERTIFICATE"}},
		{name: "agent: replicas a word", chart: agentChart, values: "replicas: two",
			want: []string{schemaErr, "at '/replicas'", "got string, want integer"}},
		{name: "agent: no replica", chart: agentChart, values: "replicas: 0",
			want: []string{"at '/replicas'", "minimum"}},
		{name: "agent: the relay's audience a cluster's (agents would accept what the relay saw)", chart: agentChart, values: "audiences: {relay: 'tether:cluster:prod'}",
			want: []string{schemaErr, "at '/audiences/relay'"}},
		{name: "agent: unknown key", chart: agentChart, values: "replica: 2",
			want: []string{schemaErr, "additional properties 'replica' not allowed"}},
		{name: "agent: unknown nested key", chart: agentChart, values: "egress: {httpProxy: 'http://proxy:3128'}",
			want: []string{"at '/egress'", "additional properties 'httpProxy' not allowed"}},
		{name: "agent: unknown transport", chart: agentChart, values: "relay: {transport: quic}",
			want: []string{"at '/relay/transport'", "'tcp', 'websocket'"}},
		{name: "agent: extra key not lower case", chart: agentChart, values: "extraImpersonatedExtras: [Example.com/Team]",
			want: []string{"at '/extraImpersonatedExtras/0'", "'Example.com/Team'"}},
		{name: "agent: anonymous authentication", chart: agentChart, values: "authenticationConfig: {anonymous: {enabled: true}}",
			want: []string{"at '/authenticationConfig'", "'anonymous' not allowed"}},
		{name: "agent: http issuer", chart: agentChart, values: "authenticationConfig: {jwt: [{issuer: {url: 'http://issuer'}, claimMappings: {}}]}",
			want: []string{"at '/authenticationConfig/jwt/0/issuer/url'", "'http://issuer'"}},
		{name: "agent: network policy without the API server", chart: agentChart, values: "networkPolicy: {enabled: true, relay: {cidrs: [203.0.113.10/32]}}",
			want: []string{"at '/networkPolicy/apiServer/cidrs'", "minItems"}},
		{name: "agent: network policy without the relay", chart: agentChart, values: "networkPolicy: {enabled: true, apiServer: {cidrs: [10.0.0.1/32]}}",
			want: []string{"networkPolicy.relay.cidrs"}},
		{name: "agent: CIDR that is not one", chart: agentChart, values: "networkPolicy: {relay: {cidrs: [relay.example.com]}}",
			want: []string{"at '/networkPolicy/relay/cidrs/0'", "'relay.example.com'"}},
		{name: "agent: both join token sources", chart: agentChart, values: "joinToken: abc\nexistingJoinTokenSecret: join",
			want: []string{"joinToken and existingJoinTokenSecret exclude each other"}},
		{name: "agent: stream window in decimal units", chart: agentChart, values: "streams: {window: 4M}",
			want: []string{schemaErr, "at '/streams/window'", "'4M' does not match pattern"}},
		{name: "agent: stream window a number", chart: agentChart, values: "streams: {window: 4194304}",
			want: []string{schemaErr, "at '/streams/window'", "got number, want string"}},
		{name: "agent: stream window below yamux's", chart: agentChart, values: "streams: {window: 128Ki}",
			want: []string{"streams.window 128Ki: want at least 256Ki"}},
		{name: "agent: stream window zero", chart: agentChart, values: "streams: {window: '0'}",
			want: []string{"streams.window 0: want at least 256Ki"}},
		{name: "agent: stream window above 1Gi", chart: agentChart, values: "streams: {window: 2Gi}",
			want: []string{"streams.window 2Gi: want at most 1Gi"}},
		{name: "agent: stream memory is the relay's", chart: agentChart, values: "streams: {memory: 1Gi}",
			want: []string{"at '/streams'", "additional properties 'memory' not allowed"}},

		{name: "relay: nothing given", chart: relayChart, bare: true,
			want: []string{schemaErr, "missing properties 'hostnames', 'authenticationConfig'"}},
		{name: "relay: etcd endpoints where they used to be", chart: relayChart, values: "storage: {etcd: {endpoints: ['https://etcd-0:2379']}}",
			want: []string{schemaErr, "at '/storage/etcd'", "storage.etcd moved to store.etcd: set store.type etcd"}},
		{name: "relay: several replicas on bbolt", chart: relayChart, values: "replicas: 3",
			want: []string{schemaErr, "at '/replicas'", "replicas above 1 need store.type etcd: with bbolt one process at a time may open the bbolt file"}},
		{name: "relay: no replica", chart: relayChart, values: "replicas: 0",
			want: []string{schemaErr, "at '/replicas'", "minimum"}},
		{name: "relay: unknown store", chart: relayChart, values: "store: {type: consul}",
			want: []string{schemaErr, "at '/store/type'", "'bbolt', 'etcd'"}},
		{name: "relay: etcd without endpoints", chart: relayChart, values: "replicas: 3\nstore: {type: etcd, etcd: {keyEncryptionKey: {existingSecret: relay-kek}}}",
			want: []string{schemaErr, "at '/store/etcd/endpoints'", "store.type etcd needs store.etcd.endpoints"}},
		{name: "relay: etcd without a key-encryption key", chart: relayChart, values: "replicas: 3\nstore: {type: etcd, etcd: {endpoints: ['https://etcd-0:2379']}}",
			want: []string{schemaErr, "at '/store/etcd/keyEncryptionKey/existingSecret'", "store.type etcd needs store.etcd.keyEncryptionKey.existingSecret"}},
		{name: "relay: etcd endpoint without a scheme", chart: relayChart, values: over(relayEtcd, "store: {etcd: {endpoints: ['etcd-0:2379']}}"),
			want: []string{schemaErr, "at '/store/etcd/endpoints/0'", "'etcd-0:2379' does not match pattern"}},
		{name: "relay: etcd endpoints as a string", chart: relayChart, values: over(relayEtcd, "store: {etcd: {endpoints: 'https://etcd-0:2379'}}"),
			want: []string{schemaErr, "at '/store/etcd/endpoints'", "got string, want array"}},
		{name: "relay: etcd prefix without slashes", chart: relayChart, values: over(relayEtcd, "store: {etcd: {prefix: tether}}"),
			want: []string{schemaErr, "at '/store/etcd/prefix'", "'tether' does not match pattern"}},
		{name: "relay: etcd values on bbolt", chart: relayChart, values: "store: {etcd: {endpoints: ['https://etcd-0:2379'], keyEncryptionKey: {existingSecret: relay-kek}}}",
			want: []string{"store.etcd is set, but store.type is bbolt: set store.type etcd"}},
		{name: "relay: etcd client TLS over http", chart: relayChart, values: over(relayEtcd, "store: {etcd: {endpoints: ['http://etcd-0:2379']}}"),
			want: []string{"store.etcd.tls.existingSecret relay-etcd-client, but no endpoint in store.etcd.endpoints is https"}},
		{name: "relay: etcd client certificate without its key", chart: relayChart, values: over(relayEtcd, "store: {etcd: {tls: {existingSecret: relay-etcd-client, keyKey: ''}}}"),
			want: []string{`store.etcd.tls.certKey "tls.crt" and keyKey "" go together`}},
		{name: "relay: etcd TLS Secret with no key named", chart: relayChart, values: over(relayEtcd, "store: {etcd: {tls: {existingSecret: relay-etcd-client, certKey: '', keyKey: '', caKey: ''}}}"),
			want: []string{"store.etcd.tls.existingSecret relay-etcd-client with no certKey, keyKey or caKey"}},
		{name: "relay: key-encryption key also among the old ones", chart: relayChart, values: over(relayEtcd, "store: {etcd: {keyEncryptionKey: {previousKeys: [kek]}}}"),
			want: []string{"store.etcd.keyEncryptionKey.previousKeys names kek, the key that encrypts"}},
		{name: "relay: key-encryption key Secret key with a slash", chart: relayChart, values: over(relayEtcd, "store: {etcd: {keyEncryptionKey: {key: ../kek}}}"),
			want: []string{schemaErr, "at '/store/etcd/keyEncryptionKey/key'", "'../kek' does not match pattern"}},
		{name: "relay: disruption budget as wide as the replicas", chart: relayChart, values: over(relayEtcd, "podDisruptionBudget: {maxUnavailable: 3}"),
			want: []string{"podDisruptionBudget.maxUnavailable 3 must be less than replicas 3"}},
		{name: "relay: peer port on the API's", chart: relayChart, values: over(relayEtcd, "peer: {port: 8443}"),
			want: []string{"peer.port 8443 is one of the relay's other ports"}},
		{name: "relay: peer port out of range", chart: relayChart, values: over(relayEtcd, "peer: {port: 70000}"),
			want: []string{schemaErr, "at '/peer/port'", "maximum"}},
		{name: "relay: no hostname", chart: relayChart, values: "hostnames: []",
			want: []string{"at '/hostnames'", "minItems"}},
		{name: "relay: hostname with a scheme", chart: relayChart, values: "hostnames: ['https://relay.example.com']",
			want: []string{"at '/hostnames/0'", "'https://relay.example.com'"}},
		{name: "relay: storage size", chart: relayChart, values: "storage: {size: 'ten gigs'}",
			want: []string{"at '/storage/size'", "'ten gigs'"}},
		{name: "relay: service type", chart: relayChart, values: "service: {type: Ingress}",
			want: []string{"at '/service/type'", "must be one of 'ClusterIP', 'NodePort', 'LoadBalancer'"}},
		{name: "relay: grace period within the drain", chart: relayChart, values: "drainTimeoutSeconds: 60\nterminationGracePeriodSeconds: 60",
			want: []string{"terminationGracePeriodSeconds (60) must be greater than drainTimeoutSeconds (60)"}},
		{name: "relay: both TLS sources", chart: relayChart, values: "tls: {existingSecret: mine, certManager: {issuerRef: {name: le}}}",
			want: []string{"tls.existingSecret and tls.certManager.issuerRef exclude each other"}},
		{name: "relay: issuer kind without a name", chart: relayChart, values: "tls: {certManager: {issuerRef: {kind: ClusterIssuer}}}",
			want: []string{"at '/tls/certManager/issuerRef'", "'name'"}},
		{name: "relay: stream window in decimal units", chart: relayChart, values: "streams: {window: 16MB}",
			want: []string{schemaErr, "at '/streams/window'", "'16MB' does not match pattern"}},
		{name: "relay: stream window with a space", chart: relayChart, values: "streams: {window: '4 Mi'}",
			want: []string{"at '/streams/window'", "'4 Mi' does not match pattern"}},
		{name: "relay: stream window a number", chart: relayChart, values: "streams: {window: 262143}",
			want: []string{"at '/streams/window'", "got number, want string"}},
		{name: "relay: stream window one byte below yamux's", chart: relayChart, values: "streams: {window: '262143'}",
			want: []string{"streams.window 262143: want at least 256Ki"}},
		{name: "relay: stream window above 1Gi", chart: relayChart, values: "streams: {window: 1025Mi}",
			want: []string{"streams.window 1025Mi: want at most 1Gi"}},
		{name: "relay: stream memory not a size", chart: relayChart, values: "streams: {memory: lots}",
			want: []string{schemaErr, "at '/streams/memory'", "'lots' does not match pattern"}},
		{name: "relay: stream memory below the window", chart: relayChart, values: "streams: {window: 16Mi, memory: 8Mi}",
			want: []string{"streams.memory 8Mi is less than one stream window (streams.window 16Mi): no stream could open"}},
		{name: "relay: stream memory zero", chart: relayChart, values: "streams: {memory: 0Gi}",
			want: []string{"streams.memory 0Gi is less than the smallest stream window (256Ki)"}},
		{name: "relay: no stream per caller", chart: relayChart, values: "streams: {maxPerCaller: 0}",
			want: []string{schemaErr, "at '/streams/maxPerCaller'", "minimum"}},
		{name: "relay: streams per cluster a word", chart: relayChart, values: "streams: {maxPerCluster: many}",
			want: []string{schemaErr, "at '/streams/maxPerCluster'", "got string, want null or integer"}},
		{name: "relay: unknown streams key", chart: relayChart, values: "streams: {maxPerUser: 10}",
			want: []string{"at '/streams'", "additional properties 'maxPerUser' not allowed"}},
		{name: "relay: admin group a string", chart: relayChart, values: "adminGroups: oidc:platform-admins",
			want: []string{schemaErr, "at '/adminGroups'", "got string, want array"}},
		{name: "relay: empty admin group", chart: relayChart, values: "adminGroups: ['']",
			want: []string{"at '/adminGroups/0'", "minLength"}},
		{name: "relay: cluster endpoint a word", chart: relayChart, values: "clusterEndpoint: 'off'",
			want: []string{schemaErr, "at '/clusterEndpoint'", "got string, want null or boolean"}},
		{name: "relay: login issuer not https", chart: relayChart, values: "login: {issuer: 'http://issuer.example.com', clientID: tether}",
			want: []string{schemaErr, "at '/login/issuer'", "'http://issuer.example.com' does not match pattern"}},
		{name: "relay: login issuer alone", chart: relayChart, values: "login: {issuer: 'https://issuer.example.com'}",
			want: []string{"login.issuer needs login.clientID"}},
		{name: "relay: login client alone", chart: relayChart, values: "login: {clientID: tether}",
			want: []string{"login.clientID needs login.issuer"}},
		{name: "relay: login at an issuer the relay does not trust", chart: relayChart, values: "login: {issuer: 'https://login.example.com', clientID: tether}",
			want: []string{"login.issuer https://login.example.com is not an issuer of authenticationConfig (https://issuer.example.com)"}},
		{name: "relay: login client not an audience", chart: relayChart, values: "login: {issuer: 'https://issuer.example.com', clientID: kubectl}",
			want: []string{"login.clientID kubectl is not among the audiences of issuer https://issuer.example.com in authenticationConfig (tether)"}},
		{name: "relay: unknown login key", chart: relayChart, values: "login: {clientSecret: s3cr3t}",
			want: []string{"at '/login'", "additional properties 'clientSecret' not allowed"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			docs := []string{tc.values}
			if !tc.bare {
				docs = append([]string{required(t, tc.chart)}, docs...)
			}
			_, err := render(t, tc.chart, values(t, docs...))
			if err == nil {
				t.Fatalf("installed with %q", tc.values)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q:\n%v", w, err)
				}
			}
		})
	}
}

// TestSecretsStayOutOfErrors checks a refused install does not print the
// join token, even next to a wrong value.
func TestSecretsStayOutOfErrors(t *testing.T) {
	const token = "tok-2b1f9c0e7d"
	_, err := render(t, agentChart, values(t, agentRequired(t), "joinToken: "+token+"\ncluster: Bad_Name"))
	if err == nil {
		t.Fatal("installed with a wrong cluster name")
	}
	if strings.Contains(err.Error(), token) {
		t.Errorf("the error shows the join token: %v", err)
	}
}

func required(t *testing.T, chart string) string {
	if chart == agentChart {
		return agentRequired(t)
	}
	return relayRequired
}

// TestStreamWindowBounds checks the charts read a size as the binaries do
// (cmd/internal/cli.Bytes: decimal, binary units, an optional B) at the
// bounds the binaries enforce, 256Ki to 1Gi.
func TestStreamWindowBounds(t *testing.T) {
	tests := []struct {
		window string
		ok     bool
	}{
		{"256Ki", true},
		{"262144", true},
		{"262144B", true},
		{"0300Ki", true}, // 300Ki: not octal
		{"1Gi", true},
		{"1GiB", true},
		{"1024Mi", true},
		{"1073741824", true},
		{"255Ki", false},
		{"262143", false},
		{"0Mi", false},
		{"1073741825", false},
		{"1025Mi", false},
		{"1Ti", false},
	}
	for _, chart := range []string{agentChart, relayChart} {
		for _, tc := range tests {
			t.Run(chart+"/"+tc.window, func(t *testing.T) {
				_, err := render(t, chart, values(t, required(t, chart), "streams: {window: '"+tc.window+"'}"))
				switch {
				case tc.ok && err != nil:
					t.Errorf("streams.window %s refused: %v", tc.window, err)
				case !tc.ok && err == nil:
					t.Errorf("streams.window %s accepted; the %s would refuse it", tc.window, chart)
				case !tc.ok && !strings.Contains(err.Error(), "streams.window "+tc.window+": want at"):
					t.Errorf("streams.window %s: error does not say what is wrong: %v", tc.window, err)
				}
			})
		}
	}
}

// TestTemplatesRefuseWhatTheSchemaRefuses renders with schema validation
// skipped (helm install --skip-schema-validation): the templates must still
// refuse the values that would run a broken relay, with the same words.
func TestTemplatesRefuseWhatTheSchemaRefuses(t *testing.T) {
	tests := []struct{ name, values, want string }{
		{"several replicas on bbolt", "replicas: 3", "replicas 3 needs store.type etcd: with bbolt one process at a time may open the bbolt file"},
		{"etcd without endpoints", "store: {type: etcd, etcd: {keyEncryptionKey: {existingSecret: relay-kek}}}", "store.type etcd needs store.etcd.endpoints"},
		{"etcd without a key-encryption key", "store: {type: etcd, etcd: {endpoints: ['https://etcd-0:2379']}}", "store.type etcd needs store.etcd.keyEncryptionKey.existingSecret"},
	}
	c := loadChart(t, relayChart)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			top, err := chartutil.ToRenderValuesWithSchemaValidation(c, values(t, relayRequired, tc.values), chartutil.ReleaseOptions{Name: release, Namespace: namespace, IsInstall: true}, nil, true)
			if err != nil {
				t.Fatalf("values refused before rendering, with schema validation skipped: %v", err)
			}
			_, err = engine.Render(c, top)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("rendered %q with error %v, want one saying %q", tc.values, err, tc.want)
			}
		})
	}
}

// over merges YAML documents, later ones over earlier ones, into one.
func over(docs ...string) string {
	out := map[string]any{}
	for _, d := range docs {
		m := map[string]any{}
		if err := yaml.Unmarshal([]byte(d), &m); err != nil {
			panic(fmt.Sprintf("values %q: %v", d, err))
		}
		merge(out, m)
	}
	b, err := yaml.Marshal(out)
	if err != nil {
		panic(err)
	}
	return string(b)
}
