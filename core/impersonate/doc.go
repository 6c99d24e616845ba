// Package impersonate is the agent's request path into the API server: an
// http.Handler that authenticates the caller's bearer token itself, then
// forwards the request with the agent's own credential and Kubernetes
// impersonation headers naming the caller.
//
// Impersonation fails open: a header the proxy forgets to remove, or one a
// client manages to smuggle past it, becomes the caller's identity. So this
// package is built to fail closed, in this order, before anything is
// forwarded:
//
//   - a request carrying any header whose name starts with "Impersonate"
//     (any case, any separator) is refused, not stripped;
//   - a Connection header may name only keep-alive, close, upgrade and
//     HTTP2-Settings: naming Authorization or an Impersonate header (to have
//     a hop-by-hop filter delete what the proxy adds) is refused;
//   - an upgrade must be SPDY/3.1, or a WebSocket whose every subprotocol is
//     one of Kubernetes' channel or port-forward protocols, on a pod's exec,
//     attach or portforward path; h2c and everything else is refused;
//   - Proxy-Authorization, a missing, repeated, non-Bearer, oversized or
//     malformed Authorization is refused;
//   - the Authenticator must accept the token;
//   - the identity must be expressible as headers: no control character
//     (CR, LF, NUL...) in any name, no empty user, extra keys in lower case,
//     and no "system:" user or group unless Config.AllowSystemNames;
//   - the agent must have its credential; without it nothing is forwarded.
//
// Forwarding uses httputil.ReverseProxy with Rewrite (never Director, whose
// headers a client's Connection header can delete), Sets rather than Adds,
// drops Forwarded and X-Forwarded-*, and flushes every write, so watches and
// logs -f stream. An upgrade is spliced only after the API server answers 101
// with the protocol asked for; the upstream connection of an upgrade request
// is never reused, so one that was refused cannot carry anything else.
// Redirects are passed to the caller, never followed.
//
// A caller who presents a service-account token of the cluster
// (Result.Passthrough) is forwarded with that token and impersonates no one.
//
// Every refusal is answered with a Kubernetes Status and logged at Warn; every
// forwarded request produces one audit line. No token is ever logged.
package impersonate
