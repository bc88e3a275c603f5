"""Simulated plant (heater loop + pump skid) behind simulated PLCs: Modbus TCP/RTU and OPC UA.

Start with `python -m hw_sim --help`, docs/hw_sim.md, `hw_sim.pointmap` (the point map) and
`hw_sim.runtime.SimPlant` (the plant the servers serve).
"""
