"""One router per resource, thin: parse, call the engine, shape the answer."""
