"""Training recipes, `<family>/<variant>.yaml`, shipped as the package data `vitzoo.configs`
(a regular package so that importlib.resources finds it in editable installs too)."""
