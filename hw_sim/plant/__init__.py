"""Pure, seeded plant models, steppable at any dt: `heater.HeaterPlant`, `pump.PumpSkid`."""
