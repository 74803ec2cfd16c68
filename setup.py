"""Ships the SQL templates in the wheel. Everything else about the package is in pyproject.toml.

`sql/` stays at the top level of the repository (the layer folders are the design); a wheel carries
a copy as `mscale/_sql`, where `Config.sql_dir` finds it when mscale runs outside the checkout, and
the feature definitions the `feature_catalog` view is generated from, doc/features_multiscale.md, as
`mscale/_doc/`. An editable install copies nothing: it reads the checkout's files in place.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
SQL = HERE / "sql"
FEATURE_DOC = HERE / "doc" / "features_multiscale.md"


class build_py_with_sql(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        package = Path(self.build_lib) / "mscale"
        copies = [(source, package / "_sql" / source.relative_to(SQL)) for source in sorted(SQL.rglob("*"))
                  if source.is_file() and source.suffix in (".sql", ".md")]
        copies.append((FEATURE_DOC, package / "_doc" / FEATURE_DOC.name))
        for source, target in copies:
            self.mkpath(str(target.parent))
            self.copy_file(str(source), str(target))


setup(cmdclass={"build_py": build_py_with_sql})
