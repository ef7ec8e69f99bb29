// Package api is the contract between the vnet-cni plugin and the node daemon
// vnet-ipamd, in one place: the socket protocol's wire types, framing, errors
// and Client; the release spool (the plugin's write and the daemon's drain);
// the conflist entry the daemon writes and the plugin reads (PluginConf); and
// the defaults both sides share. The plugin links this package and nothing
// else of the daemon; the socket server is package
// github.com/vnet-cni/vnet-cni/ipamd/server.
//
// # Transport
//
// A unix stream socket, by default [DefaultSocketPath], mode 0600 in a
// directory the server creates with mode 0700. The server reads the peer's
// credentials (SO_PEERCRED) on every connection and serves only allowed uids
// (root by default). One connection carries exactly one call: the client
// connects, writes one request, reads one response and closes. The plugin is
// a fresh process per pod, so there is nothing to gain from keeping
// connections open, and one call per connection keeps graceful shutdown and
// cancellation simple: a client that hangs up cancels its call. For the same
// reason a client must not half-close its side after the request.
//
// # Framing
//
// Every message is a 4-byte big-endian length followed by that many bytes of
// JSON. A length of zero or above the limit (server: its WithMaxMessageSize
// option, default 1 MiB; client: 4 MiB) is refused before anything is allocated for it.
//
// # Messages
//
// A request:
//
//	{"version":"1.0","op":"allocate","timeoutMs":2000,"body":{"containerID":"c1","ifName":"eth0",...}}
//
// op is one of allocate, release, check, gc, status and list; body is the JSON of
// the matching request type (AllocateRequest, ...); timeoutMs is the client's
// remaining deadline, which the server applies to the handler's context
// (capped by the server's WithMaxCallTimeout option).
//
// A response is either
//
//	{"version":"1.0","body":{...}}
//
// with the JSON of the matching response type, or
//
//	{"version":"1.0","error":{"code":"TryAgain","message":"no free address"}}
//
// where code is one of the [Code] constants. The "version" and "error" members
// are fixed for all future versions, so that any two versions can at least
// tell each other that they disagree.
//
// # Versions
//
// [Version] is "major.minor". A minor version only adds optional fields and
// operations; receivers ignore unknown fields, so a request of a newer minor
// version is served. A request whose major version differs from the server's
// is refused with [CodeVersionMismatch], naming both versions; the client
// likewise refuses a response of another major version.
package api
