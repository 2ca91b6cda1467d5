"""What tests share: random models (`models`), the Hugging Face reference (`reference`), TF checkpoints
(`tf_checkpoints`), stand-in servers (`hub_server`, `convert_http_server`, both on `local_http`;
`app_server`) and step helpers (`stepping`)."""
