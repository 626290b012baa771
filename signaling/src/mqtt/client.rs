//! The sans-IO MQTT client machine. (Being written; see the issue tracker.)
