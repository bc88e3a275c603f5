"""Pure, seeded plant models, steppable at any dt: `heater.HeaterPlant`, `pump.PumpSkid`, and
the loop plants `surge.SurgePlant` and `exchanger.ExchangerPlant` (parameters drawn from a seed)."""
