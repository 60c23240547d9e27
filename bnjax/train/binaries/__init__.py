"""The console scripts: ``bnjax-train`` (:mod:`.train`), ``bnjax-study``
(:mod:`.study`) and the report of a study folder (:mod:`.report`)."""
