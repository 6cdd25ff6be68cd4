// Wrapper module that builds the real Alibaba CronHPA controller
// (github.com/AliyunContainerService/kubernetes-cronhpa-controller) for the
// e2e tests; see build.sh. Nothing here is imported by the operator.
//
// v1.3.0 is the newest controller version the Go module proxy serves. It
// predates Go modules (it was built with dep), so every dependency is pinned
// here to the revision in its Gopkg.lock (kubernetes-1.14.1 client libraries,
// k8s.io/kubernetes v1.14.6, controller-runtime v0.2.0), with these
// deliberate deviations:
//   - github.com/ringtail/go-cron: the lock's revision is not served; this is
//     the revision the controller's later go.mod uses. Same API, and it adds
//     the "@date YYYY-MM-DD hh:mm:ss" schedule.
//   - github.com/modern-go/reflect2 v1.0.2 and json-iterator v1.1.12: the
//     locked reflect2 1.0.1 is broken at run time on Go >= 1.18.
//   - github.com/Sirupsen/logrus: the controller imports the old capitalised
//     path; it is served from github.com/sirupsen/logrus at the locked v1.4.2.
//   - k8s.io/cloud-provider: the kubernetes-1.14.1 tag of the staging repo.
//   - prometheus/client_golang v1.0.0 and k8s.io/utils: what minimal version
//     selection requires (the latter replaced back to the Gopkg.toml override).
// Do not run `go mod tidy`: it also resolves the tests of these module-less
// dependencies, which cannot be satisfied. Build with -mod=readonly.
module flashsale.dev/toolchain/cronhpa

go 1.24

tool github.com/AliyunContainerService/kubernetes-cronhpa-controller/cmd/kubernetes-cronhpa-controller

require (
	github.com/AliyunContainerService/kubernetes-cronhpa-controller v1.3.0
	github.com/Sirupsen/logrus v1.4.2
	github.com/ringtail/go-cron v1.0.1-0.20201027122514-cfb21c105f50
	github.com/satori/go.uuid v1.2.0
	k8s.io/api v0.0.0-20190409021203-6e4e0e4f393b
	k8s.io/apiextensions-apiserver v0.0.0-20190409022649-727a075fdec8
	k8s.io/apimachinery v0.0.0-20190404173353-6a84e37a896d
	k8s.io/apiserver v0.0.0-20190409021813-1ec86e4da56c
	k8s.io/client-go v11.0.1-0.20190409021438-1a26190bd76a+incompatible
	k8s.io/cloud-provider v0.0.0-20190409023720-1bc0c81fa51d
	k8s.io/kubernetes v1.14.6
	sigs.k8s.io/controller-runtime v0.2.0
)

require (
	cloud.google.com/go v0.44.3 // indirect
	github.com/beorn7/perks v1.0.1 // indirect
	github.com/davecgh/go-spew v1.1.1 // indirect
	github.com/docker/distribution v2.7.1+incompatible // indirect
	github.com/evanphx/json-patch v4.5.0+incompatible // indirect
	github.com/go-logr/logr v0.1.0 // indirect
	github.com/go-logr/zapr v0.1.1 // indirect
	github.com/gogo/protobuf v1.2.1 // indirect
	github.com/golang/groupcache v0.0.0-20190702054246-869f871628b6 // indirect
	github.com/golang/protobuf v1.3.2 // indirect
	github.com/google/gofuzz v1.0.0 // indirect
	github.com/google/uuid v1.0.0 // indirect
	github.com/googleapis/gnostic v0.3.1 // indirect
	github.com/hashicorp/golang-lru v0.5.3 // indirect
	github.com/imdario/mergo v0.3.7 // indirect
	github.com/json-iterator/go v1.1.12 // indirect
	github.com/matttproud/golang_protobuf_extensions v1.0.1 // indirect
	github.com/modern-go/concurrent v0.0.0-20180306012644-bacd9c7ef1dd // indirect
	github.com/modern-go/reflect2 v1.0.2 // indirect
	github.com/opencontainers/go-digest v1.0.0-rc1 // indirect
	github.com/pborman/uuid v1.2.0 // indirect
	github.com/pkg/errors v0.8.1 // indirect
	github.com/prometheus/client_golang v1.0.0 // indirect
	github.com/prometheus/client_model v0.0.0-20190812154241-14fe0d1b01d4 // indirect
	github.com/prometheus/common v0.6.0 // indirect
	github.com/prometheus/procfs v0.0.4 // indirect
	github.com/spf13/pflag v1.0.3 // indirect
	go.uber.org/atomic v1.4.0 // indirect
	go.uber.org/multierr v1.1.0 // indirect
	go.uber.org/zap v1.10.0 // indirect
	golang.org/x/crypto v0.0.0-20190820162420-60c769a6c586 // indirect
	golang.org/x/net v0.0.0-20190827160401-ba9fcec4b297 // indirect
	golang.org/x/oauth2 v0.0.0-20190604053449-0f29369cfe45 // indirect
	golang.org/x/sys v0.0.0-20190826190057-c7b8b68b1456 // indirect
	golang.org/x/text v0.3.2 // indirect
	golang.org/x/time v0.0.0-20190308202827-9d24e82272b4 // indirect
	gomodules.xyz/jsonpatch/v2 v2.0.1 // indirect
	gopkg.in/fsnotify.v1 v1.4.7 // indirect
	gopkg.in/inf.v0 v0.9.1 // indirect
	gopkg.in/square/go-jose.v2 v2.3.1 // indirect
	gopkg.in/yaml.v2 v2.2.2 // indirect
	k8s.io/klog v0.4.0 // indirect
	k8s.io/kube-openapi v0.0.0-20190228160746-b3a7cee44a30 // indirect
	k8s.io/utils v0.0.0-20190506122338-8fab8cb257d5 // indirect
	sigs.k8s.io/yaml v1.1.0 // indirect
)

replace (
	github.com/Sirupsen/logrus => github.com/sirupsen/logrus v1.4.2
	// Gopkg.toml overrides k8s.io/utils to this revision; controller-runtime's
	// go.mod would otherwise select a newer one.
	k8s.io/utils => k8s.io/utils v0.0.0-20190221042446-c2654d5206da
)
