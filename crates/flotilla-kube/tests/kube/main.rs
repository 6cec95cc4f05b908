//! flotilla-kube's specification: one test binary, one module per topic.

mod install;
mod istio;
mod kustomize;
mod openapi;
