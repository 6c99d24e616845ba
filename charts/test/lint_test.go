package charts

import (
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
)

// TestLint runs `helm lint --strict` (warnings fail too) on both charts, for
// every set of values the render tests use.
func TestLint(t *testing.T) {
	for _, ch := range []struct {
		name     string
		required string
		cases    []chartCase
	}{
		{agentChart, agentRequired(t), agentCases()},
		{relayChart, relayRequired, relayCases()},
	} {
		for _, tc := range ch.cases {
			t.Run(ch.name+"/"+tc.name, func(t *testing.T) {
				vals := values(t, append([]string{ch.required}, tc.values...)...)
				linter := lint.AllWithKubeVersionAndSchemaValidation(chartDir(ch.name), vals, namespace, nil, false)
				for _, m := range linter.Messages {
					if m.Severity >= support.WarningSev {
						t.Errorf("lint: %s", m)
					}
				}
			})
		}
	}
}

// TestLintRefusesMissingValues checks lint, like install, refuses a chart
// given none of its required values, naming them.
func TestLintRefusesMissingValues(t *testing.T) {
	for chart, want := range map[string]string{agentChart: "'cluster'", relayChart: "'hostnames'"} {
		linter := lint.AllWithKubeVersionAndSchemaValidation(chartDir(chart), nil, namespace, nil, false)
		var msgs []string
		for _, m := range linter.Messages {
			if m.Severity == support.ErrorSev {
				msgs = append(msgs, m.Error())
			}
		}
		if !strings.Contains(strings.Join(msgs, "\n"), want) {
			t.Errorf("%s: lint without values: errors %q, want one naming %s", chart, msgs, want)
		}
	}
}
