// statuscheck: reads one Kubernetes object and prints how kstatus
// (sigs.k8s.io/cli-utils) and an Argo CD Lua health script judge it; used by
// the e2e tests, nothing here is imported by the operator. Built by build.sh.
//
// Pins:
//   - sigs.k8s.io/cli-utils v0.37.2: the kstatus library (its go.mod asks for
//     the v0.30 client libraries; the kstatus/status package only needs
//     apimachinery and api/core/v1, which build fine at v0.36.3).
//   - k8s.io/apimachinery and k8s.io/api v0.36.3: the same Kubernetes minor as
//     the control plane in ../k8s (k8s.io/api is raised explicitly so the
//     pair stays in step; tidy lists it as indirect).
//   - github.com/yuin/gopher-lua v1.1.1: the Lua VM version Argo CD uses.
// Regenerate go.sum with `GOWORK=off go mod tidy` after a bump.
module flashsale.dev/toolchain/statuscheck

go 1.26.0

require (
	github.com/yuin/gopher-lua v1.1.1
	k8s.io/apimachinery v0.36.3
	sigs.k8s.io/cli-utils v0.37.2
	sigs.k8s.io/yaml v1.6.0
)

require (
	github.com/fxamacker/cbor/v2 v2.9.0 // indirect
	github.com/go-logr/logr v1.4.3 // indirect
	github.com/json-iterator/go v1.1.12 // indirect
	github.com/kr/text v0.2.0 // indirect
	github.com/modern-go/concurrent v0.0.0-20180306012644-bacd9c7ef1dd // indirect
	github.com/modern-go/reflect2 v1.0.3-0.20250322232337-35a7c28c31ee // indirect
	github.com/x448/float16 v0.8.4 // indirect
	go.yaml.in/yaml/v2 v2.4.3 // indirect
	golang.org/x/net v0.49.0 // indirect
	golang.org/x/text v0.33.0 // indirect
	gopkg.in/inf.v0 v0.9.1 // indirect
	k8s.io/api v0.36.3 // indirect
	k8s.io/klog/v2 v2.140.0 // indirect
	k8s.io/kube-openapi v0.0.0-20260317180543-43fb72c5454a // indirect
	k8s.io/utils v0.0.0-20260210185600-b8788abfbbc2 // indirect
	sigs.k8s.io/json v0.0.0-20250730193827-2d320260d730 // indirect
	sigs.k8s.io/randfill v1.0.0 // indirect
	sigs.k8s.io/structured-merge-diff/v6 v6.3.3 // indirect
)
