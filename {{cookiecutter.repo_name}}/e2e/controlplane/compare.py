"""A model's object held to the real one, field by field: every field the model states must be in the real object
with the same value. Lists of named things (containers, ports, volumes) are matched by name, other lists by
position. The real object may hold more: the model says only what the repo decides."""


def disagreements(model: object, real: object, path: str = "") -> list[str]:
    if isinstance(model, dict):
        if not isinstance(real, dict):
            return [f"{path or '.'}: the model has a mapping, the real object {real!r}"]
        return [
            problem
            for key, value in model.items()
            for problem in (
                [f"{path}.{key}: the model has {value!r}, the real object has no such field"]
                if key not in real and value not in ({}, [], None, False)
                else disagreements(value, real.get(key), f"{path}.{key}")
            )
        ]
    if isinstance(model, list):
        if not isinstance(real, list):
            return [f"{path}: the model has a list, the real object {real!r}"]
        if all(isinstance(item, dict) and "name" in item for item in model):
            by_name = {item.get("name"): item for item in real if isinstance(item, dict)}
            return [
                problem
                for item in model
                for problem in (
                    disagreements(item, by_name[item["name"]], f"{path}[{item['name']}]")
                    if item["name"] in by_name
                    else [
                        f"{path}[{item['name']}]: in the model, not in the real object (it has {sorted(map(str, by_name))})"
                    ]
                )
            ]
        if len(model) != len(real):
            return [f"{path}: the model has {model!r}, the real object {real!r}"]
        return [
            problem
            for index, item in enumerate(model)
            for problem in disagreements(item, real[index], f"{path}[{index}]")
        ]
    if model != real and not (model in ({}, [], None, False) and real in ({}, [], None, False)):
        return [f"{path}: the model has {model!r}, the real object {real!r}"]
    return []
