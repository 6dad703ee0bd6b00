"""The controller process: built once (:mod:`podgate.app.build`), run by the supervisor
(:mod:`podgate.app.supervisor`)."""
