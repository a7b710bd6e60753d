module bulwark.dev/sloth-binary
go 1.26
require github.com/slok/sloth v0.12.0
