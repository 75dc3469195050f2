// Copy of github.com/traefik/traefik pkg/config/dynamic/ext/ext.go (identical in v3.7.0 to v3.7.13;
// MIT licence, Copyright (c) 2016-2020 Containous SAS; 2020-2025 Traefik Labs).
// Upstream keeps this as a nested module inside the Traefik repository and points to it with a
// local replace (`=> ./pkg/config/dynamic/ext`). Nested modules are left out of the module zip that
// proxy.golang.org serves, and the module path does not match its directory, so the proxy can
// never serve it: the wrapper (../go.mod) replaces it with this copy instead.

package ext

// HTTP is a dynamic.HTTP extension.
type HTTP struct{}

// Router is a dynamic.Router extension.
type Router struct{}
