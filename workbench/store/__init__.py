"""Files: the recording writer and reader, audio input files, and the project's own data sets (speechset, synth)."""
