// Package e2e holds detour's end-to-end tests: the detour binary, built
// once per test run, runs in the lab's network namespaces with its own
// rules, between real clients and servers, against the real kernel.
//
// The tests need root; without it they skip with a message.
package e2e
