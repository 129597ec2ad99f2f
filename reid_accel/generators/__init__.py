"""Image generators: the procedural synthetic re-ID world, and look-alike folders in each benchmark's layout.

Their modules sit on different floors: `synthetic` (which the data layer's synthetic benchmark calls to draw a
missing world) below the data layer, `lookalike` (which writes the layouts the parsers read, by their names) above
it. So this package imports neither.
"""
