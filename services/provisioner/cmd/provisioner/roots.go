package main

// The images are built on an empty base without CA certificates (deployments/images): the
// binary carries Mozilla's roots and uses them when the system has none.
import _ "golang.org/x/crypto/x509roots/fallback"
