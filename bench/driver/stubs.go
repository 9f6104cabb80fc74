package main

import "context"

type CheckInResult struct{}
type FleetResult struct{}
type FootprintResult struct{}
type Target struct{}

func benchCheckIn(context.Context, *config) (*CheckInResult, error)     { return nil, nil }
func benchFleet(context.Context, *config) (*FleetResult, error)         { return nil, nil }
func benchFootprint(context.Context, *config) (*FootprintResult, error) { return nil, nil }
func fleetChild([]string) int                                           { return 0 }
func targets(*Results) []Target                                         { return nil }
func writeDoc(string, *Results) error                                   { return nil }
